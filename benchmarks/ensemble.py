"""Does averaging several training runs take the seed lottery out?  Scored on the suite only.

    uv run python benchmarks/ensemble.py RUN_OR_CHECKPOINT [RUN_OR_CHECKPOINT ...]
        [--suite ../shared/data/external] [--json benchmarks/results/ensemble.json]

Each argument is a checkpoint (``.safetensors``) or a run folder (its ``best.safetensors``). Every member scores
every set of the suite (same crops, same policy); the ensemble's P(fake) is the plain mean of the members'
P(fake) over the crops every member scored. Nothing is weighted or chosen on the suite.

Printed per set: each member's AUC, the ensemble's AUC, and the median P(fake) per real source and per
generator, for the members and the ensemble. The members were trained on different splits of the pool, so no
pool file is held out from all of them: the ensemble's threshold here is the mean of the members' thresholds,
and its real-ACC is indicative only (a shipped ensemble, or a model distilled from one, needs its own
held-out reals).
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


def checkpoint_of(arg: str) -> Path:
    p = Path(arg)
    ck = p / "best.safetensors" if p.is_dir() else p
    if not ck.is_file():
        raise SystemExit(f"no checkpoint at {ck}")
    return ck


def member_scores(ck: Path, suite: Path, workers: int) -> tuple[float, dict[str, dict]]:
    """(threshold, {set: {"scores": {crop sha: P(fake)}, "key": {sha: 'real:src' | 'fake:gen'}}})."""
    from mfclip_cli.evaluate import SuiteOptions, run_suite

    res = run_suite(SuiteOptions(str(ck), str(suite), bootstrap=0, seed=0, workers=workers))
    out: dict[str, dict] = {}
    for s in res.sets:
        if not s.scored:
            continue
        keys = {e.sha256: (f"real:{e.record.source}" if e.record.y == 0 else f"fake:{e.record.generator}")
                for e in s.entries}
        out[s.name] = {"scores": {e.sha256: float(v) for e, v in zip(s.entries, s.scores, strict=True)},
                       "key": keys}
    return float(res.threshold), out


def summarise(scores: np.ndarray, keys: list[str], threshold: float) -> dict:
    from sklearn.metrics import roc_auc_score

    y = np.array([k.startswith("fake:") for k in keys], dtype=int)
    groups: dict[str, list[float]] = {}
    for k, v in zip(keys, scores, strict=True):
        groups.setdefault(k, []).append(float(v))
    return {"auc": float(roc_auc_score(y, scores)),
            "median": {k: float(np.median(v)) for k, v in sorted(groups.items())},
            "real_acc": {k[5:]: float(np.mean(np.array(v) < threshold))
                         for k, v in sorted(groups.items()) if k.startswith("real:")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("members", nargs="+", help="run folders or checkpoints")
    ap.add_argument("--suite", type=Path, default=ROOT.parent / "shared" / "data" / "external")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "ensemble.json")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if len(args.members) < 2:
        raise SystemExit("an ensemble needs at least two members")
    t0 = time.perf_counter()
    cks = [checkpoint_of(m) for m in args.members]
    members = []
    for ck in cks:
        print(f"[ensemble] scoring the suite with {ck}", flush=True)
        members.append(member_scores(ck, args.suite, args.workers))
    threshold = float(np.mean([t for t, _ in members]))
    result: dict = {"command": "uv run python " + " ".join(sys.argv), "members": [str(c) for c in cks],
                    "member_thresholds": [t for t, _ in members], "threshold": threshold, "sets": {}}
    for name in sorted(set.intersection(*(set(m) for _, m in members))):
        shas = sorted(set.intersection(*(set(m[name]["scores"]) for _, m in members)))
        keys = [members[0][1][name]["key"][h] for h in shas]
        per = np.array([[m[name]["scores"][h] for h in shas] for _, m in members])
        row = {"n": len(shas), "members": [summarise(p, keys, t) for p, (t, _) in zip(per, members, strict=True)],
               "ensemble": summarise(per.mean(axis=0), keys, threshold)}
        result["sets"][name] = row
        print(f"{name} ({len(shas)} crops): members "
              + " ".join(f"{r['auc']:.3f}" for r in row["members"]) + f" -> ensemble {row['ensemble']['auc']:.3f}")
        for k, med in row["ensemble"]["median"].items():
            print(f"    {k:28s} median P(fake) members "
                  + " ".join(f"{r['median'][k]:.2f}" for r in row["members"]) + f" -> ensemble {med:.2f}")
    rows = list(result["sets"].values())
    labelled = [("ensemble", [r["ensemble"]["auc"] for r in rows])]
    labelled += [(f"member {i}", [r["members"][i]["auc"] for r in rows]) for i in range(len(cks))]
    result["summary"] = {}
    for label, aucs in labelled:
        result["summary"][label] = {"mean_auc": float(np.mean(aucs)), "min_auc": float(np.min(aucs))}
        print(f"{label}: suite mean {np.mean(aucs):.3f}, min {np.min(aucs):.3f}")
    result["seconds"] = round(time.perf_counter() - t0, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.json)


if __name__ == "__main__":
    main()
