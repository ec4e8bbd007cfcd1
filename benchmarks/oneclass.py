"""Real-only evidence: a one-class model of how real photos' pixels predict their neighbours, judged on the suite.

    uv run python benchmarks/oneclass.py [--pool ../shared/data/faces] [--suite ../shared/data/external]
        [--model weights/mfclip_default.safetensors] [--json benchmarks/results/oneclass.json]

In the spirit of forensic self-descriptions (Nguyen, Azizpour & Stamm, CVPR 2025): every face is described
by a linear predictor fitted to that image alone (each pixel of the face region, per colour channel,
predicted from its 5x5 neighbours by least squares: 24 weights per channel, plus the log residual and
signal energies). Cameras, demosaicing and JPEG leave one family of such predictors; generators' upsampling
leaves others. A Gaussian mixture is fitted on the descriptors of REAL training faces only, so it cannot learn
anything about the fake pool (its framing, prompts or demographics); the score is the negative
log-likelihood: how unlike a real photo the face's pixel correlations are.

The training reals go through the same parity chain as `mfclip train --parity on` (random resize + JPEG,
a quarter exactly the suite's 256² q90), so JPEG history and face size are not what "real" means. The region
is read from the file's own pixels (no resampling into a crop): the face box's central 80 %.

Prints AUC per suite set (and per generator / real source), on the pool's held-out test files, and for a
fixed fusion with the checkpoint's P(fake) (mean of the two ranks' z-scores, z from the pool's validation
files): no weight is chosen on the suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mfclip_cli.data.crops import CropCache, prepare_crops
from mfclip_cli.data.layouts import read_dataset
from mfclip_cli.data.splits import split_for_group
from mfclip_cli.data.transforms import ParityChain
from mfclip_cli.paths import cache_dir

RADIUS = 2  # 5x5 neighbourhood
MAX_SIDE = 160  # regions larger than this are sampled on a strided grid of centres, not resized


def neighbour_design(ch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(neighbours [n, 24], centres [n]) for every interior pixel of one channel (float32)."""
    h, w = ch.shape
    r = RADIUS
    step = max(1, int(np.ceil(max(h, w) / MAX_SIDE)))
    centre = ch[r:h - r:step, r:w - r:step]
    cols = []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy == 0 and dx == 0:
                continue
            cols.append(ch[r + dy:h - r + dy:step, r + dx:w - r + dx:step][:centre.shape[0], :centre.shape[1]])
    x = np.stack([c.reshape(-1) for c in cols], axis=1)
    return x, centre.reshape(-1)


def self_description(region: np.ndarray) -> np.ndarray | None:
    """The descriptor of one RGB uint8 region: per channel 24 predictor weights + log residual energy +
    log energy of the mean-removed signal."""
    if min(region.shape[:2]) < 4 * RADIUS + 8:
        return None
    parts = []
    for c in range(3):
        ch = region[..., c].astype(np.float32)
        x, y = neighbour_design(ch)
        mu = y.mean()
        x, y = x - mu, y - mu
        w = np.linalg.solve(x.T @ x + 1e-3 * np.eye(x.shape[1], dtype=x.dtype), x.T @ y)  # least squares
        res = y - x @ w
        parts.append(np.concatenate([w, [np.log(res.var() + 1e-3), np.log(y.var() + 1e-3)]]))
    return np.concatenate(parts).astype(np.float64)


def face_region(img: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    x1, y1, x2, y2 = box
    cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, 0.4 * (x2 - x1), 0.4 * (y2 - y1)
    h, w = img.shape[:2]
    a, b = max(0, int(cx - hw)), min(w, int(cx + hw))
    c, d = max(0, int(cy - hh)), min(h, int(cy + hh))
    return img[c:d, a:b]


def describe(root: Path, chain: ParityChain | None, seed: int, policy) -> dict[str, list]:
    """Descriptors of every face of ``root`` (the face the crop cache found under ``policy``)."""
    import cv2

    recs = read_dataset(str(root), "auto")
    entries, _ = prepare_crops(recs, policy, CropCache(cache_dir() / "crops", policy), workers=2, geometry=True)
    out: dict[str, list] = {"d": [], "y": [], "source": [], "group": [], "sha": []}
    rng = np.random.default_rng(seed)
    for e in entries:
        if e.face is None:
            continue
        bgr = cv2.imread(e.record.path, cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        box = e.face.box
        if chain is not None:
            img, (sx, sy) = chain(img, max(e.face.width, e.face.height), rng)
            box = ((box[0] + 0.5) * sx - 0.5, (box[1] + 0.5) * sy - 0.5, (box[2] + 0.5) * sx - 0.5,
                   (box[3] + 0.5) * sy - 0.5)
        d = self_description(face_region(img, box))
        if d is None:
            continue
        out["d"].append(d)
        out["y"].append(e.record.y)
        out["source"].append(e.record.label.generator if e.record.y else f"real:{e.record.source}")
        out["group"].append(e.record.group)
        out["sha"].append(e.sha256)
    return out


def auc(y: np.ndarray, s: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if len(set(y.tolist())) == 2 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=Path, default=ROOT.parent / "shared" / "data" / "faces")
    ap.add_argument("--suite", type=Path, default=ROOT.parent / "shared" / "data" / "external")
    ap.add_argument("--model", type=Path, default=ROOT / "weights" / "mfclip_default.safetensors")
    ap.add_argument("--components", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "oneclass.json")
    args = ap.parse_args()

    from sklearn.mixture import GaussianMixture
    from sklearn.preprocessing import StandardScaler

    from mfclip_cli.model import load_checkpoint

    t0 = time.perf_counter()
    model, meta = load_checkpoint(str(args.model))
    policy = meta.input_spec().crop
    pool = describe(args.pool, ParityChain(), args.seed, policy)
    split = np.array([split_for_group(g, 0, 0.1, 0.05) for g in pool["group"]])  # as `mfclip train` seed 0
    d, y = np.array(pool["d"]), np.array(pool["y"])
    fit = (split == "train") & (y == 0)
    scaler = StandardScaler().fit(d[fit])
    gmm = GaussianMixture(args.components, covariance_type="full", reg_covar=1e-3, random_state=args.seed)
    gmm.fit(scaler.transform(d[fit]))

    def score(desc: np.ndarray) -> np.ndarray:
        return -gmm.score_samples(scaler.transform(desc))

    pool_s = score(d)
    result: dict = {"command": "uv run python " + " ".join(sys.argv), "n_fit_reals": int(fit.sum()),
                    "components": args.components, "pool": {}, "suite": {}}
    for name in ("val", "test"):
        m = split == name
        result["pool"][name] = {"auc": auc(y[m], pool_s[m]), "n": int(m.sum())}
    print(f"fitted on {fit.sum()} real training faces; pool val AUC {result['pool']['val']['auc']:.3f}, "
          f"test AUC {result['pool']['test']['auc']:.3f}")

    model_scores = checkpoint_scores(model, policy)
    val = split == "val"
    pool_val_p = model_scores(args.pool, set(np.array(pool["sha"])[val].tolist()))
    pv = np.array([pool_val_p.get(sha, np.nan) for sha in np.array(pool["sha"])[val]])
    # the fusion's z-scores, fixed on the pool's validation files (nothing is chosen on the suite)
    oc_mu, oc_sd, p_mu, p_sd = pool_s[val].mean(), pool_s[val].std(), np.nanmean(pv), np.nanstd(pv)
    for set_dir in sorted(p for p in args.suite.iterdir() if p.is_dir()):
        s = describe(set_dir, None, args.seed, policy)
        sy, ss = np.array(s["y"]), score(np.array(s["d"]))
        row = {"auc": auc(sy, ss), "n_real": int((sy == 0).sum()), "n_fake": int(sy.sum()), "by_source": {}}
        src = np.array(s["source"])
        for g in sorted(set(s["source"])):
            if g.startswith("real:"):
                continue
            m = (src == g) | (sy == 0)
            row["by_source"][g] = auc(sy[m], ss[m])
        p = np.array([model_scores(set_dir).get(sha, np.nan) for sha in s["sha"]])
        ok = np.isfinite(p)
        fused = ((ss - oc_mu) / oc_sd + (p - p_mu) / p_sd) / 2
        row["model_auc"], row["fused_auc"] = auc(sy[ok], p[ok]), auc(sy[ok], fused[ok])
        result["suite"][set_dir.name] = row
        print(f"{set_dir.name}: one-class AUC {row['auc']:.3f}  "
              + "  ".join(f"{g} {v:.3f}" for g, v in row["by_source"].items())
              + f"  | model {row['model_auc']:.3f}  fused {row['fused_auc']:.3f}")
    aucs = [r["auc"] for r in result["suite"].values()]
    result["suite_mean_auc"], result["suite_min_auc"] = float(np.mean(aucs)), float(np.min(aucs))
    fused = [r["fused_auc"] for r in result["suite"].values()]
    result["fused_mean_auc"], result["fused_min_auc"] = float(np.mean(fused)), float(np.min(fused))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"suite mean {result['suite_mean_auc']:.3f}, min {result['suite_min_auc']:.3f}"
          + f"; fused mean {result['fused_mean_auc']:.3f}, min {result['fused_min_auc']:.3f} ({result['seconds']} s)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


def checkpoint_scores(model, policy):
    """A function (root, only these file hashes) -> {sha256: P(fake)} for the checkpoint, memoised per root."""
    from mfclip_cli.evaluate import score_entries

    memo: dict[str, dict[str, float]] = {}

    def get(root: Path, only: set[str] | None = None) -> dict[str, float]:
        key = str(root)
        if key not in memo:
            recs = read_dataset(key, "auto")
            entries, _ = prepare_crops(recs, policy, CropCache(cache_dir() / "crops", policy), workers=2)
            entries = [e for e in entries if only is None or e.sha256 in only]
            scores = score_entries(model, entries, batch_size=32)
            memo[key] = {e.sha256: float(s) for e, s in zip(entries, scores, strict=True)}
        return memo[key]

    return get


if __name__ == "__main__":
    main()
