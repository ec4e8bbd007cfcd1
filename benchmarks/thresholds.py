"""How the threshold rule decides what an analyst sees: pooled vs per-source false-positive rate on held-out reals.

A run's validation reals come from several sources. The pooled rule (`--target-fpr F` today) takes the score
that flags F of all of them; the per-source rule takes the highest of each source's F-quantile, so no source
of reals is flagged more than F. For each rule this prints the threshold, the share of each validation source
called real, and, on the external suite (sources the model never saw), the real-ACC of each real source and the
recall of each generator.

    uv run python benchmarks/thresholds.py runs/ablation/L-G-swa/best.safetensors --run runs/ablation/L-G-swa
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SUITE = ROOT.parent / "shared" / "data" / "external"


def val_scores(ckpt: Path, run: Path, workers: int) -> tuple[np.ndarray, list]:
    from mfclip_cli.data.crops import CropCache, prepare_crops
    from mfclip_cli.data.manifest import read_manifest_csv
    from mfclip_cli.evaluate import score_entries
    from mfclip_cli.model import load_checkpoint
    from mfclip_cli.paths import cache_dir

    model, meta = load_checkpoint(ckpt)
    policy = meta.input_spec().crop
    records = read_manifest_csv(run / "val.csv")
    entries, _ = prepare_crops(records, policy, CropCache(cache_dir() / "crops", policy), workers=workers)
    return score_entries(model, entries, workers=workers), entries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--run", type=Path, required=True, help="the checkpoint's run folder (for val.csv)")
    ap.add_argument("--suite", type=Path, default=DEFAULT_SUITE)
    ap.add_argument("--fpr", type=float, nargs="+", default=[0.05, 0.01])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from mfclip_cli.decision import choose_threshold, threshold_method
    from mfclip_cli.evaluate import SuiteOptions, run_suite

    scores, entries = val_scores(args.checkpoint, args.run, args.workers)
    real = np.array([e.record.y == 0 for e in entries])
    srcs = [e.record.source for e, r in zip(entries, real, strict=True) if r]
    rs = scores[real]
    suite = run_suite(SuiteOptions(str(args.checkpoint), str(args.suite), workers=args.workers))
    groups: dict[str, list[float]] = {}
    for s in suite.sets:
        for e, sc in zip(s.entries, s.scores, strict=True):
            groups.setdefault(f"{'real' if e.record.y == 0 else 'fake'}:{e.record.source}", []).append(float(sc))
    rows = []
    zeros = np.zeros(len(rs), dtype=int)
    for fpr in args.fpr:
        # the rules `--target-fpr F` and `--target-fpr F --fpr-per-source` apply (mfclip_cli.decision)
        for rule, per_source in (("pooled", False), ("per-source", True)):
            thr, _ = choose_threshold(rs, zeros, threshold_method(fpr, per_source), fpr, sources=srcs)
            val_acc = {src: float(np.mean(rs[[s == src for s in srcs]] < thr)) for src in sorted(set(srcs))}
            ext = {k: float(np.mean(np.array(v) < thr) if k.startswith("real") else np.mean(np.array(v) >= thr))
                   for k, v in sorted(groups.items())}
            rows.append({"fpr": fpr, "rule": rule, "threshold": thr, "val_real_acc": val_acc,
                         "suite_real_acc_or_fake_recall": ext})
            print(f"\nFPR {fpr} {rule}: threshold {thr:.3f}  (checkpoint's own: {suite.threshold:.3f})")
            print("  validation real-ACC: " + ", ".join(f"{k} {v:.2f}" for k, v in val_acc.items()))
            print("  suite: " + ", ".join(f"{k} {v:.2f}" for k, v in ext.items()))
    if args.json:
        args.json.write_text(json.dumps({"checkpoint": str(args.checkpoint), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
