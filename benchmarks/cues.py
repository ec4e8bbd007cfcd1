"""Which image properties a checkpoint's scores follow, in the training pool and on the external suite.

    uv run python benchmarks/cues.py CKPT [--pool ../shared/data/faces] [--suite ../shared/data/external]
        [--json benchmarks/results/cues.json] [--plot benchmarks/results/cues.png]

A set scored below 0.5 AUC means some cue points the wrong way there. For each property of the face crop
(face size in the file's pixels, sharpness, colour saturation, brightness, greyness) this prints:
- pool AUC: how well the property alone separates fake from real in the training pool (0.5 = not at all;
  below 0.5 = larger values are more often real), i.e. what a model *could* learn from it;
- per suite set, the same AUC of the property alone, and the rank correlation (Spearman) of the
  checkpoint's P(fake) with the property within each class.
A property whose pool AUC and suite AUC sit on opposite sides of 0.5, and which the scores follow, is a
cue that points the wrong way on that set. The crops are the checkpoint's own (its crop policy).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mfclip_cli.data.crops import CropCache, prepare_crops
from mfclip_cli.data.layouts import read_dataset
from mfclip_cli.evaluate import score_entries
from mfclip_cli.faces.types import CropPolicy
from mfclip_cli.model import load_checkpoint
from mfclip_cli.model.preprocess import face_mask
from mfclip_cli.paths import cache_dir

PROPERTIES = ("face_px", "sharpness", "saturation", "brightness", "greyness")


def crop_properties(crop: np.ndarray, face_px: float) -> dict[str, float]:
    """The properties of one RGB uint8 crop, measured inside the face ellipse."""
    import cv2

    keep = face_mask(crop.shape[0], "ellipse")
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32)
    lap = cv2.Laplacian(grey, cv2.CV_32F)
    hsv = cv2.cvtColor(crop, cv2.COLOR_RGB2HSV)
    rgb = crop.astype(np.float32)
    chroma = np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])
    return {"face_px": float(face_px), "sharpness": float(np.log1p(lap[keep].var())),
            "saturation": float(hsv[..., 1][keep].mean()), "brightness": float(grey[keep].mean()),
            "greyness": float(-chroma[keep].mean())}


def measure(root: str, policy: CropPolicy, model=None) -> dict[str, np.ndarray | list]:
    """Labels, sources, properties (and P(fake) when ``model`` is given) of every face in ``root``."""
    import cv2

    recs = read_dataset(root, "auto")
    entries, _ = prepare_crops(recs, policy, CropCache(cache_dir() / "crops", policy), workers=2, geometry=True)
    props = []
    for e in entries:
        crop = cv2.cvtColor(cv2.imread(e.crop_path), cv2.COLOR_BGR2RGB)
        side = max(e.face.width, e.face.height) if e.face is not None else float("nan")
        props.append(crop_properties(crop, side))
    out: dict[str, np.ndarray | list] = {
        "y": np.array([e.record.y for e in entries]), "source": [e.record.source for e in entries],
        **{k: np.array([p[k] for p in props]) for k in PROPERTIES}}
    if model is not None:
        out["score"] = score_entries(model, entries, batch_size=32)
    return out


def auc(y: np.ndarray, x: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    ok = np.isfinite(x)
    if len(set(y[ok].tolist())) < 2:
        return None
    return float(roc_auc_score(y[ok], x[ok]))


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import spearmanr

    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 5:
        return None
    return float(spearmanr(a[ok], b[ok]).statistic)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--pool", default=str(ROOT.parent / "shared" / "data" / "faces"))
    ap.add_argument("--suite", default=str(ROOT.parent / "shared" / "data" / "external"))
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--plot", help="PNG: P(fake) against each property, per suite set and class")
    args = ap.parse_args()
    model, meta = load_checkpoint(args.checkpoint)
    policy = meta.input_spec().crop
    pool = measure(args.pool, policy)
    sets = {p.name: measure(str(p), policy, model) for p in sorted(Path(args.suite).iterdir())
            if (p / "real").is_dir() and (p / "fake").is_dir()}
    report: dict = {"checkpoint": args.checkpoint, "pool_auc": {}, "sets": {}}
    for k in PROPERTIES:
        report["pool_auc"][k] = auc(pool["y"], pool[k])
    for name, d in sets.items():
        y, s = d["y"], d["score"]
        row = {"auc": auc(y, s), "property_auc": {}, "score_follows": {}}
        for k in PROPERTIES:
            row["property_auc"][k] = auc(y, d[k])
            row["score_follows"][k] = {"real": spearman(s[y == 0], d[k][y == 0]),
                                       "fake": spearman(s[y == 1], d[k][y == 1])}
        report["sets"][name] = row

    def f(v: float | None) -> str:
        return "  —  " if v is None else f"{v:.2f}"

    print(f"checkpoint {args.checkpoint}")
    head = f"{'property':12s} {'pool AUC':>8s}"
    for name in sets:
        head += f" | {name[:24]:>24s}: AUC  rho(real) rho(fake)"
    print(head)
    for k in PROPERTIES:
        line = f"{k:12s} {f(report['pool_auc'][k]):>8s}"
        for name in sets:
            r = report["sets"][name]
            line += (f" | {'':>24s}  {f(r['property_auc'][k]):>5s} {f(r['score_follows'][k]['real']):>9s}"
                     f" {f(r['score_follows'][k]['fake']):>9s}")
        print(line)
    print("set AUC: " + ", ".join(f"{n} {f(r['auc'])}" for n, r in report["sets"].items()))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(len(sets), len(PROPERTIES), figsize=(3.2 * len(PROPERTIES), 2.8 * len(sets)),
                                 squeeze=False)
        for i, (name, d) in enumerate(sets.items()):
            for j, k in enumerate(PROPERTIES):
                ax = axes[i][j]
                for cls, colour in ((0, "tab:blue"), (1, "tab:red")):
                    m = d["y"] == cls
                    ax.scatter(d[k][m], d["score"][m], s=4, alpha=0.5, c=colour,
                               label="real" if cls == 0 else "fake")
                ax.set_xlabel(k)
                ax.set_ylabel(f"{name[:18]}\nP(fake)" if j == 0 else "")
                ax.set_ylim(-0.02, 1.02)
        axes[0][0].legend(loc="best", fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=80)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
