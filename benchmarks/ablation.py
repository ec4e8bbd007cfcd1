"""Training recipes compared on faces from sources the training pool never saw (the external suite).

    uv run python benchmarks/ablation.py [--data ../shared/data/faces] [--suite ../shared/data/external]
        [--out runs/ablation] [--steps 150] [--variants A,B,...] [--markdown benchmarks/ablation.md]

Every variant is one `mfclip train --protocol in-domain` on the whole pool (10 % validation, 5 % in-pool
test), with the same seed, crop policy, batch, step budget, learning rate and threshold rule (the score
that flags 5 % of the validation reals); only the flags in the table differ. Each trained model is then
scored on every set of the suite (`mfclip eval --suite`: AUC with a 200-resample bootstrap CI, mean, min,
and the worst real-ACC over the suite's real sources at the model's threshold). The in-pool test AUC is
printed beside it, so the table shows where a split of the pool and new sources disagree.

Per variant the script also keeps each suite set's score distribution (median P(fake) per real source and
per generator) and draws it (benchmarks/results/ablation/<variant>.png): a set below 0.5 AUC means some cue
points the wrong way there (see benchmarks/cues.py).

Resumable: a variant already in ablation.json whose run folder holds test_metrics.json is kept (``--rescore``
scores it again), one whose run finished is only scored, and a half-finished one continues with
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_FACES = ROOT.parent / "shared" / "data" / "faces"
DEFAULT_SUITE = ROOT.parent / "shared" / "data" / "external"
PARITY = ["--parity", "on", "--balance", "sources", "--augment", "light"]

# name -> (what it tests, extra `mfclip train` flags). Shared flags are in common_flags().
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "A-strongaug": ("previous recipe: crop-level JPEG / down-up / blur re-drawn for most images", ["--augment", "strong"]),
    "B-parity": (("parity chain before cropping (face size, JPEG history, 256² q90 share, grey share), "
                  "source-balanced sampling"), PARITY),
    "C-parity-sbi": ("B + self-blended pseudo-fakes (a quarter of the reals)", [*PARITY, "--pseudo-fakes", "sbi"]),
    "D-parity-npr": ("B with NPR residuals in the noise branch instead of SRM", [*PARITY, "--noise-residual", "npr"]),
    "E-parity-colournorm": (("B with each crop's channels standardised over the face (brightness, contrast and "
                             "colour cast removed: benchmarks/cues.py found them pointing the wrong way)"),
                            [*PARITY, "--colour-norm", "per-crop"]),
    "F-parity-colournorm-sbi": ("E + self-blended pseudo-fakes",
                                [*PARITY, "--colour-norm", "per-crop", "--pseudo-fakes", "sbi"]),
    "G-F-3epochs": ("F trained three times as long (3 passes of at most 150 steps, best by validation loss)",
                    [*PARITY, "--colour-norm", "per-crop", "--pseudo-fakes", "sbi", "--epochs", "3"]),
    "H-F-5epochs": ("F trained five times as long (5 passes of at most 150 steps, best by validation loss)",
                    [*PARITY, "--colour-norm", "per-crop", "--pseudo-fakes", "sbi", "--epochs", "5"]),
    "I-G-patches": (("G with a local image branch: the tower sees a 3 x 3 grid of 80 px squares of the 224 px crop, "
                     "embeddings averaged, so no image feature sees the whole face (issue #14 item 2b)"),
                    [*PARITY, "--colour-norm", "per-crop", "--pseudo-fakes", "sbi", "--epochs", "3",
                     "--image-patches", "3", "--image-patch-px", "80"]),
    "J-G-swap": (("G + swap-blended pseudo-fakes: a further quarter of the reals with another real's inner face "
                  "pasted in (resolution drop, colour matched towards the target, soft inner-face mask)"),
                 [*PARITY, "--colour-norm", "per-crop", "--pseudo-fakes", "sbi+swap", "--epochs", "3"]),
    "K-G-ae": (("G + autoencoder pseudo-fakes: a further quarter of the reals reconstructed by a small autoencoder "
                "trained on the run's reals (issue #14 item 4)"),
               [*PARITY, "--colour-norm", "per-crop", "--pseudo-fakes", "sbi+ae", "--epochs", "3"]),
    "L-G-swa": (("G with stochastic weight averaging: the saved weights are the equal average of the weights after "
                 "every step of passes 2 and 3 (flat minima travel better across domains; SWAD, Cha et al. 2021)"),
                [*PARITY, "--colour-norm", "per-crop", "--pseudo-fakes", "sbi", "--epochs", "3",
                 "--weight-average", "swa"]),
    "I-seed1": ("I with seed 1: is the patch grid's lead over G more than luck",
                [*PARITY, "--colour-norm", "per-crop", "--pseudo-fakes", "sbi", "--epochs", "3",
                 "--image-patches", "3", "--image-patch-px", "80", "--seed", "1"]),
    "G-seed1": ("G with seed 1 (another split, sampling and initialisation of the heads): how much of a gap is luck",
                [*PARITY, "--colour-norm", "per-crop", "--pseudo-fakes", "sbi", "--epochs", "3", "--seed", "1"]),
    "G-seed2": ("G with seed 2: the spread of the shipped recipe over three seeds",
                [*PARITY, "--colour-norm", "per-crop", "--pseudo-fakes", "sbi", "--epochs", "3", "--seed", "2"]),
    "M-G-sbi-soft": (("G with self-blends whose pasted copy is only softened, never sharpened: half of G's "
                      "pseudo-fakes teach 'a sharper inner face is fake', and sharper CelebA reals score more fake "
                      "(benchmarks/cues.py, Spearman 0.28), while CelebA-HQ reals are super-resolved"),
                     [*PARITY, "--colour-norm", "per-crop", "--pseudo-fakes", "sbi-soft", "--epochs", "3"]),
    "M-seed1": ("M with seed 1",
                [*PARITY, "--colour-norm", "per-crop", "--pseudo-fakes", "sbi-soft", "--epochs", "3", "--seed", "1"]),
    "M-seed2": ("M with seed 2: M against G over the same three seeds",
                [*PARITY, "--colour-norm", "per-crop", "--pseudo-fakes", "sbi-soft", "--epochs", "3", "--seed", "2"]),
    "N-M-sharp": (("M with the sharpening parity chain: 30 % of all training images, real or fake, unsharp-masked "
                   "after the resize, so a sharpened look is no class cue"),
                  ["--parity", "sharp", "--balance", "sources", "--augment", "light", "--colour-norm", "per-crop",
                   "--pseudo-fakes", "sbi-soft", "--epochs", "3"]),
    "O-M-retouch": (("M with the retouching parity chain: as N, and a further 20 % of all training images smoothed "
                     "by an edge-preserving filter (denoisers, beauty filters, restoration networks such as "
                     "CelebA-HQ's), so an airbrushed look is no class cue either"),
                    ["--parity", "retouch", "--balance", "sources", "--augment", "light", "--colour-norm",
                     "per-crop", "--pseudo-fakes", "sbi-soft", "--epochs", "3"]),
    "P-M-distill": (("M distilled from three models (G seed 0, the shipped file until now; M seeds 0 and 1): "
                     "half of the classification loss follows their mean P(fake) on each training input, to take "
                     "the seed lottery out at one model's scan cost (teachers: run M-seed1 first; runs/teachers/"
                     "G-seed0.safetensors is `git show c693b6e:weights/mfclip_default.safetensors`)"),
                    [*PARITY, "--colour-norm", "per-crop", "--pseudo-fakes", "sbi-soft", "--epochs", "3",
                     "--teacher", "runs/teachers/G-seed0.safetensors", "--teacher", "runs/default/best.safetensors",
                     "--teacher", "runs/ablation/M-seed1/best.safetensors"]),
}


def common_flags(args: argparse.Namespace, shown: bool = False) -> list[str]:
    """The flags every variant shares; ``shown``: with the data path relative to the repository."""
    data = os.path.relpath(args.data, ROOT) if shown else str(args.data)
    return ["--data", data, "--protocol", "in-domain", "--preset", "effnet-lite0", "--crop-margin", "0",
            "--test-frac", "0.05", "--epochs", "1", "--batch-size", "24", "--workers", str(args.workers),
            "--seed", str(args.seed), "--bootstrap", "0", "-q", "--max-steps", str(args.steps),
            "--target-fpr", "0.05"]


def mfclip_cmd() -> list[str]:
    exe = shutil.which("mfclip", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "mfclip_cli"]


def train_variant(name: str, args: argparse.Namespace) -> Path:
    """Train (or resume) one variant; its run folder."""
    out = Path(args.out) / name
    if (out / "test_metrics.json").is_file():
        return out
    cmd = mfclip_cmd() + (["train", "--resume", str(out)] if (out / "config.json").is_file()
                          else ["train", *common_flags(args), *VARIANTS[name][1], "--out", str(out)])
    print(f"[ablation] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True)
    (out / "wall_seconds.txt").write_text(f"{time.monotonic() - t0:.0f}\n")
    return out


def distribution(set_result) -> dict[str, dict]:
    """Median and quartiles of P(fake) per real source and per generator of one scored suite set."""
    groups: dict[str, list[float]] = {}
    for entry, score in zip(set_result.entries, set_result.scores, strict=True):
        rec = entry.record
        key = f"real:{rec.source}" if rec.y == 0 else f"fake:{rec.generator}"
        groups.setdefault(key, []).append(float(score))
    return {k: {"n": len(v), "q25": float(np.percentile(v, 25)), "median": float(np.median(v)),
                "q75": float(np.percentile(v, 75))} for k, v in sorted(groups.items())}


def plot_distributions(name: str, suite, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [s for s in suite.sets if s.scored]
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3), squeeze=False)
    for ax, s in zip(axes[0], sets, strict=True):
        groups: dict[str, list[float]] = {}
        for entry, score in zip(s.entries, s.scores, strict=True):
            rec = entry.record
            groups.setdefault(f"{'real' if rec.y == 0 else 'fake'}: {rec.source}", []).append(float(score))
        bins = np.linspace(0, 1, 26)
        for label, vals in sorted(groups.items()):
            ax.hist(vals, bins=bins, histtype="step", linewidth=1.5, density=True,
                    linestyle="-" if label.startswith("fake") else "--", label=f"{label} ({len(vals)})")
        ax.axvline(suite.threshold, color="k", linewidth=0.8)
        ax.set_title(f"{s.name}: AUC {s.auc:.2f}", fontsize=9)
        ax.set_xlabel("P(fake)")
        ax.legend(fontsize=6)
    fig.suptitle(f"{name}: score distributions on the suite (threshold {suite.threshold:.2f})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def score_variant(name: str, run: Path, args: argparse.Namespace) -> dict:
    from mfclip_cli.evaluate import SuiteOptions, run_suite

    suite = run_suite(SuiteOptions(str(run / "best.safetensors"), args.suite, bootstrap=200, seed=args.seed,
                                   workers=args.workers))
    tests = json.loads((run / "test_metrics.json").read_text())
    in_pool = next((r for rep in tests.values() for r in rep["rows"] if r["name"] == "all"), {})
    plots = Path(args.json).parent / "ablation"
    plots.mkdir(parents=True, exist_ok=True)
    plot_distributions(name, suite, plots / f"{name}.png")
    wall = run / "wall_seconds.txt"
    sets = {}
    for s in suite.sets:
        if not s.scored:
            sets[s.name] = {"error": s.error}
            continue
        allrow = next(r for r in s.rows if r.name == "all")
        sets[s.name] = {"auc": allrow.metrics.auc, "auc_ci": allrow.metrics.auc_ci,
                        "real_acc": {r.source: r.real_acc for r in s.real_sources},
                        "distribution": distribution(s)}
    return {"variant": name, "what": VARIANTS[name][0], "flags": VARIANTS[name][1], "threshold": suite.threshold,
            "sets": sets, "mean_auc": suite.summary.mean_auc, "min_auc": suite.summary.min_auc,
            "worst_real_acc": suite.summary.worst_real_acc, "worst_real_source": suite.summary.worst_real_source,
            "in_pool_test_auc": in_pool.get("auc"),
            "train_wall_seconds": float(wall.read_text()) if wall.is_file() else None}


def _auc(cell: dict) -> str:
    if "error" in cell:
        return "not scored"
    ci = cell.get("auc_ci")
    return f"{cell['auc']:.3f} [{ci[0]:.2f}–{ci[1]:.2f}]" if ci else f"{cell['auc']:.3f}"


def markdown(results: list[dict], args: argparse.Namespace, cmdline: str) -> str:
    set_names = sorted({s for r in results for s in r["sets"]})
    lines = [
        "# MFCLIP training recipes, judged on sources the pool never saw",
        "",
        (f"Produced by `{cmdline}` on {datetime.now(UTC):%Y-%m-%d}, {platform.machine()} CPU, "
         f"{os.cpu_count()} cores, no GPU."),
        "",
        ("Each variant trains one model on `../shared/data/faces` (in-domain split by file, seed "
         f"{args.seed}: 10 % validation, 5 % in-pool test), one pass of at most {args.steps} steps of 24 images, "
         "Adam 1e-4, RetinaFace crops (5-point alignment, margin 0, ellipse mask); the threshold flags 5 % of the "
         "validation reals. Only the flags differ. Suite columns: AUC with its bootstrap 95 % CI (200 stratified "
         "resamples) on `../shared/data/external` (every image 256² JPEG q90). Worst real-ACC: the lowest share of "
         "real faces called real, over the suite's real sources, at the model's threshold."),
        "",
        "| variant | " + " | ".join(set_names) + " | suite mean | suite min | worst real-ACC | in-pool test AUC |",
        "|---|" + "---|" * len(set_names) + "---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: -(r["mean_auc"] or 0)):
        cells = [_auc(r["sets"].get(s, {"error": "missing"})) for s in set_names]
        wr = f"{r['worst_real_acc']:.2f} ({r['worst_real_source']})" if r["worst_real_acc"] is not None else "—"
        pool = f"{r['in_pool_test_auc']:.3f}" if r["in_pool_test_auc"] is not None else "—"
        lines.append(f"| `{r['variant']}` | " + " | ".join(cells)
                     + f" | **{r['mean_auc']:.3f}** | {r['min_auc']:.3f} | {wr} | {pool} |")
    lines += ["", "What each variant changes (flags on top of the shared ones):", ""]
    lines += [f"- `{r['variant']}`: {r['what']} — `{' '.join(r['flags'])}`" for r in results]
    lines += ["", "Shared: `mfclip train " + " ".join(common_flags(args, shown=True)) + " --out RUN`", "",
              ("Median P(fake) per source on the suite (score distributions; the plots are in "
               "`benchmarks/results/ablation/`):"), ""]
    groups = sorted({(s, g) for r in results for s, cell in r["sets"].items() for g in cell.get("distribution", {})})
    lines.append("| variant | " + " | ".join(f"{s.split('_vs_')[0]}…: {g}" for s, g in groups) + " |")
    lines.append("|---|" + "---|" * len(groups))
    for r in results:
        vals = []
        for s, g in groups:
            d = r["sets"].get(s, {}).get("distribution", {}).get(g)
            vals.append(f"{d['median']:.2f}" if d else "—")
        lines.append(f"| `{r['variant']}` | " + " | ".join(vals) + " |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("MFCLIP_SHARED_FACES", DEFAULT_FACES)))
    ap.add_argument("--suite", type=Path, default=DEFAULT_SUITE)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "ablation")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--rescore", action="store_true", help="score variants again even if ablation.json has them")
    ap.add_argument("--markdown", type=Path, default=ROOT / "benchmarks" / "ablation.md")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "ablation.json")
    args = ap.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    for p, what in ((args.data, "--data"), (args.suite, "--suite")):
        if not p.is_dir():
            ap.error(f"no folder at {p} ({what})")
    cmdline = "uv run python benchmarks/ablation.py " + " ".join(sys.argv[1:])
    previous = json.loads(args.json.read_text())["results"] if args.json.is_file() else []
    results = {r["variant"]: r for r in previous if r["variant"] in VARIANTS}
    for name in names:
        if name in results and not args.rescore and (Path(args.out) / name / "test_metrics.json").is_file():
            continue  # trained and scored by an earlier invocation
        run = train_variant(name, args)
        results[name] = score_variant(name, run, args)
        # rewrite after every variant: a long sweep leaves a readable table at each step
        ordered = [results[n] for n in VARIANTS if n in results]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": cmdline, "results": ordered}, indent=2) + "\n")
        args.markdown.write_text(markdown(ordered, args, cmdline.strip()))
    print(args.markdown.read_text())


if __name__ == "__main__":
    main()
