"""Recipe comparison and ablation of MFCLIP, judged on sources the model never saw (leave-source-out).

    uv run python benchmarks/ablation.py [--data ../shared/data/faces] [--out runs/ablation]
        [--steps 60] [--epochs 1] [--variants full-pair,image-only,...] [--markdown benchmarks/ablation.md]

Every variant is one `mfclip train --protocol leave-source-out` (3 runs: each holds out one fake generator
AND one real source and tests on exactly that pair), with the same data, seed, crop policy, batch, step
budget and learning rate; only the flags in the table differ. The table lists each run's AUC with its
bootstrap 95% CI (200 stratified resamples of the held-out test set) and the mean over runs.

Resumable: a variant whose summary.json holds every run is read back, a half-finished one continues with
`mfclip train --resume`. Results also go to benchmarks/results/ablation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FACES = ROOT.parent / "shared" / "data" / "faces"

# name -> (what it tests, extra `mfclip train` flags). Shared flags are in common_flags().
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "full-pair": ("full MFCLIP, SPA pair (default), ImageNet trunk frozen", ["--spa", "pair", "--freeze-image"]),
    "full-pair-finetune": ("full MFCLIP, SPA pair, ImageNet trunk fine-tuned", ["--spa", "pair"]),
    "image-only": ("image branch alone, SPA pair, trunk frozen", ["--branches", "image", "--spa", "pair",
                                                                  "--freeze-image"]),
    "noise-only": ("noise branch alone, SPA pair", ["--branches", "noise", "--spa", "pair"]),
    "full-none": ("full MFCLIP, no SPA, trunk frozen", ["--spa", "none", "--freeze-image"]),
    "full-matrix": ("full MFCLIP, SPA matrix (released code), trunk frozen", ["--spa", "matrix", "--freeze-image"]),
    "full-pair-random": ("full MFCLIP, SPA pair, random-init trunk trained",
                         ["--spa", "pair", "--image-init", "random"]),
    "full-pair-strongaug": ("full MFCLIP, SPA pair, trunk frozen, strong augmentation (JPEG/sharpness re-drawn)",
                            ["--spa", "pair", "--freeze-image", "--augment", "strong"]),
    "full-pair-finetune-strongaug": ("full MFCLIP, SPA pair, trunk fine-tuned, strong augmentation",
                                     ["--spa", "pair", "--augment", "strong"]),
}


def common_flags(args: argparse.Namespace, shown: bool = False) -> list[str]:
    """The flags every variant shares; ``shown``: with the data path relative to the repository."""
    data = os.path.relpath(args.data, ROOT) if shown else str(args.data)
    return ["--data", data, "--protocol", "leave-source-out", "--preset", "effnet-lite0",
            "--crop-margin", "0", "--epochs", str(args.epochs), "--max-steps", str(args.steps),
            "--batch-size", "24", "--workers", str(args.workers), "--seed", str(args.seed), "--quiet"]


def mfclip_cmd() -> list[str]:
    exe = shutil.which("mfclip", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "mfclip_cli"]


def run_variant(name: str, args: argparse.Namespace) -> dict:
    """Train (or resume, or read back) one variant; its summary plus wall time and training images/s."""
    out = Path(args.out) / name
    summary_path = out / "summary.json"
    flags = VARIANTS[name][1]
    if not (summary_path.is_file() and len(json.loads(summary_path.read_text())["runs"]) == 3):
        cmd = mfclip_cmd() + (["train", "--resume", str(out)] if (out / "config.json").is_file()
                              else ["train", *common_flags(args), *flags, "--out", str(out)])
        print(f"[ablation] {name}: {' '.join(cmd)}", flush=True)
        t0 = time.monotonic()
        subprocess.run(cmd, check=True)
        (out / "wall_seconds.txt").write_text(f"{time.monotonic() - t0:.0f}\n")
    summary = json.loads(summary_path.read_text())
    speeds = []
    for i in (1, 2, 3):
        m = out / f"run-{i}" / "metrics.jsonl"
        if m.is_file():
            speeds += [json.loads(line)["images_per_s"] for line in m.read_text().splitlines() if line.strip()]
    wall = out / "wall_seconds.txt"
    return {"variant": name, "what": VARIANTS[name][0], "flags": flags, **summary,
            "train_images_per_s": sum(speeds) / len(speeds) if speeds else None,
            "wall_seconds": float(wall.read_text()) if wall.is_file() else None}


def _fmt_run(r: dict) -> str:
    ci = r.get("auc_ci")
    return f"{r['auc']:.3f} [{ci[0]:.2f}–{ci[1]:.2f}]" if ci else f"{r['auc']:.3f}"


def markdown(results: list[dict], args: argparse.Namespace, cmdline: str) -> str:
    held = [r["test"].removeprefix("heldout:") for r in results[0]["runs"]] if results else []
    lines = [
        "# MFCLIP recipe comparison and ablation (leave-source-out)",
        "",
        (f"Produced by `{cmdline}` on {datetime.now(UTC):%Y-%m-%d}, "
         f"{platform.machine()} CPU, {os.cpu_count()} cores, no GPU."),
        "",
        ("Each variant trains three models. Each one holds out one fake generator and one real source and is "
         "tested on exactly that pair, so every number below is measured on sources the model never saw. "
         f"Same data, seed {args.seed}, face crops (RetinaFace, 5-point alignment, margin 0, ellipse mask), "
         f"batch 24, Adam 1e-4, {args.epochs} epoch(s) of at most {args.steps} steps per run; only the flags "
         "differ. AUC of the held-out pair with its bootstrap 95% CI (200 stratified resamples)."),
        "",
        "| variant | what | " + " | ".join(f"held out: {h}" for h in held) + " | mean AUC (± sd) |",
        "|---|---|" + "---|" * len(held) + "---|",
    ]
    for res in sorted(results, key=lambda r: -(r["mean_auc"] or 0)):
        cells = [_fmt_run(r) for r in res["runs"]]
        lines.append(f"| `{res['variant']}` | {res['what']} | " + " | ".join(cells)
                     + f" | **{res['mean_auc']:.3f}** ± {res['std_auc']:.3f} |")
    lines += ["", "Flags per variant (on top of the shared ones):", ""]
    lines += [f"- `{r['variant']}`: `{' '.join(r['flags'])}`" for r in results]
    lines += ["", "Shared: `mfclip train " + " ".join(common_flags(args, shown=True)) + " --out RUN`", "",
              ("SPA at this budget: `pair` and `matrix` both start from a zero-initialised gate (sigmoid(0) = 0.5 "
               "on every image-text pair); 60 Adam steps of lr 1e-4 move each parameter by at most 6e-3, so the "
               "gates stay within 0.5 +- 0.003 and the two train alike; `none` leaves the similarities unhalved, which acts like another temperature. "
               "Telling the SPA variants apart needs longer runs."),
              "",
              ("Training speed is not compared here (the machine was shared and some runs were paused for "
              "other measurements); `benchmarks/train_step.py` measures it. Each run's images/s is in "
              "benchmarks/results/ablation.json."), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("MFCLIP_SHARED_FACES", DEFAULT_FACES)))
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "ablation")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--markdown", type=Path, default=ROOT / "benchmarks" / "ablation.md")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "ablation.json")
    args = ap.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    if not args.data.is_dir():
        ap.error(f"no dataset at {args.data} (set --data or MFCLIP_SHARED_FACES)")
    cmdline = "uv run python benchmarks/ablation.py " + " ".join(sys.argv[1:])
    results = []
    for name in names:
        results.append(run_variant(name, args))
        # rewrite after every variant: a long sweep leaves a readable table at each step
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": cmdline, "results": results}, indent=2) + "\n")
        args.markdown.write_text(markdown(results, args, cmdline.strip()))
    print(args.markdown.read_text())


if __name__ == "__main__":
    main()
