"""Peak memory of `mfclip eval` as the data set grows: it should stay flat (scores stream from disk).

Generates synthetic 256x256 JPEGs in a temporary generic tree (half real, half fake), saves an untrained
'tiny' checkpoint whose crop policy is "none" (no face detector), then runs ``run_eval`` in a fresh
subprocess per size with its own empty crop cache, so every run crops and scores everything. Reported:
the eval process's peak RSS (``ru_maxrss``) and the peak RSS summed over its process tree (DataLoader
workers included, polled with psutil), for each size, and the ratio largest / smallest (goal <= 1.2).

    uv run python benchmarks/eval_memory.py                 # 500 and 2000 images
    uv run python benchmarks/eval_memory.py --sizes 500 4000 --workers 0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

CHILD = r"""
import json, resource, sys, time
from mfclip_cli.evaluate import EvalOptions, run_eval
ckpt, root, workers, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
t0 = time.monotonic()
result = run_eval(EvalOptions(checkpoint=ckpt, data=root, workers=workers, batch_size=batch, device="cpu"))
seconds = time.monotonic() - t0
print(json.dumps({
    "n": result.sets[0].row("all").metrics.n,
    "seconds": seconds,
    "self_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "children_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
}))
"""


def write_images(folder: Path, count: int, rng: np.random.Generator, fake: bool, size: int = 256) -> None:
    """``count`` JPEGs of smooth noise (reals) or 2x-nearest-upsampled noise (fakes)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        if fake:
            small = rng.integers(0, 256, (size // 2, size // 2, 3), dtype=np.uint8)
            img = cv2.resize(small, (size, size), interpolation=cv2.INTER_NEAREST)
        else:
            small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
            img = cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(str(folder / f"{i:06d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])


def make_tree(root: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    write_images(root / "real" / "ffhq", n // 2, rng, fake=False)
    write_images(root / "fake" / "entire_synthesis" / "ddpm", n - n // 2, rng, fake=True)
    return root


def make_checkpoint(path: Path) -> Path:
    """An untrained tiny model with a crop policy of 'none' (whole image, no detector)."""
    from mfclip_cli.faces.types import CropPolicy
    from mfclip_cli.model import build_model, load_preset, save_checkpoint
    from mfclip_cli.model.metadata import CheckpointMeta, InputSpec, ThresholdRecord

    model = build_model(load_preset("tiny"), seed=0)
    meta = CheckpointMeta(threshold=ThresholdRecord(0.5, "fixed (benchmark)"),
                          input=InputSpec(CropPolicy.none(224), model.cfg.preprocess))
    return save_checkpoint(path, model, meta=meta)


def tree_rss(proc) -> int:
    """RSS in bytes of ``proc`` and all its descendants (0 once it has exited)."""
    import psutil

    total = 0
    try:
        for p in [proc, *proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        return 0
    return total


def measure(ckpt: Path, root: Path, cache: Path, workers: int, batch: int, threads: int) -> dict:
    import psutil

    env = dict(os.environ, MFCLIP_CACHE=str(cache), OMP_NUM_THREADS=str(threads))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ckpt), str(root), str(workers), str(batch)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        peak = max(peak, tree_rss(ps))
        time.sleep(0.05)
    out, err = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"eval subprocess failed ({child.returncode}):\n{err[-3000:]}")
    stats = json.loads(out.strip().splitlines()[-1])
    stats["tree_peak_mb"] = peak / 2**20
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    ap.add_argument("--workers", type=int, default=2, help="DataLoader / crop workers of the eval")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads in the eval process")
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="mfclip-evalmem-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        ckpt = make_checkpoint(work / "tiny.safetensors")
        rows = []
        for n in args.sizes:
            t0 = time.monotonic()
            root = make_tree(work / f"data-{n}", n, seed=n)
            gen_s = time.monotonic() - t0
            stats = measure(ckpt, root, work / f"cache-{n}", args.workers, args.batch_size, args.threads)
            rows.append({"images": n, "generate_s": round(gen_s, 1), **stats})
            print(f"{n:6d} images: eval {stats['seconds']:6.1f} s · peak RSS eval process "
                  f"{stats['self_maxrss_mb']:7.1f} MB · workers {stats['children_maxrss_mb']:7.1f} MB · "
                  f"process tree {stats['tree_peak_mb']:7.1f} MB", flush=True)
        small, large = rows[0], rows[-1]
        ratio_self = large["self_maxrss_mb"] / small["self_maxrss_mb"]
        ratio_tree = large["tree_peak_mb"] / max(small["tree_peak_mb"], 1e-9)
        verdict = "OK" if max(ratio_self, ratio_tree) <= 1.2 else "ABOVE GOAL"
        print(f"ratio {large['images']}/{small['images']} images: eval process {ratio_self:.3f}, "
              f"process tree {ratio_tree:.3f} (goal <= 1.2: {verdict})")
        print(json.dumps({"rows": rows, "ratio_self": ratio_self, "ratio_tree": ratio_tree}, indent=2))


if __name__ == "__main__":
    main()
