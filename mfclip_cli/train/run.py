"""The driver of `mfclip train`: every run of a protocol (:func:`run_training`), summaries, resuming options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..data.transforms import parity_chain, train_augment
from ..errors import MfclipError
from ..fsutil import atomic_write_json
from .loop import train_one
from .options import BALANCES, WEIGHT_AVERAGES, Callback, TrainOptions, TrainResult, no_callback
from .sampling import pseudo_fake_kinds
from .setup import model_config_for, process_rank, resolve_splits


# --- driver --------------------------------------------------------------------------------------------------
def run_training(opts: TrainOptions, *, resume: bool = False, callback: Callback = no_callback) -> list[TrainResult]:
    """Train every run of the protocol (one for most; one per held-out pair for leave-source-out)."""
    train_augment(opts.augment)  # unknown names fail before anything is written
    parity_chain(opts.parity)
    pseudo_fake_kinds(opts.pseudo_fakes)
    if opts.balance not in BALANCES:
        raise MfclipError(f"unknown --balance {opts.balance!r}; valid: {', '.join(BALANCES)}")
    if opts.weight_average not in WEIGHT_AVERAGES:
        raise MfclipError(f"unknown --weight-average {opts.weight_average!r}; valid: {', '.join(WEIGHT_AVERAGES)}")
    if opts.target_fpr is not None and not 0.0 < opts.target_fpr < 1.0:
        raise MfclipError(f"--target-fpr must be between 0 and 1, got {opts.target_fpr}")
    if opts.fpr_per_source and opts.target_fpr is None:
        raise MfclipError("--fpr-per-source needs --target-fpr F (the false-positive rate each real source keeps)")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    if not resume and process_rank() == 0:  # under torchrun rank 0 alone writes; the others would see its file
        existing = out / "config.json"
        # a run that failed before its first checkpoint (bad data, Ctrl-C while cropping) left only its
        # config: nothing to resume or lose, so a rerun starts over instead of being blocked
        if existing.exists() and any(out.rglob("*.safetensors")):
            raise MfclipError(f"{out} already holds a training run; use --resume {out} or another --out")
        atomic_write_json(out / "config.json", {"options": opts.to_dict(),
                                                "model": model_config_for(opts).to_dict(),
                                                "mfclip": __version__})
    splits = resolve_splits(opts)
    if opts.run is not None:
        if not 1 <= opts.run <= len(splits):
            raise MfclipError(f"--run must be between 1 and {len(splits)} for this protocol")
        chosen = [(opts.run, splits[opts.run - 1])]
    else:
        chosen = list(enumerate(splits, start=1))
    results = []
    for i, split in chosen:
        run_dir = out if len(splits) == 1 else out / f"run-{i}"
        callback("run_start", {"run": i, "of": len(splits), "name": split.name, "dir": str(run_dir)})
        done = (run_dir / "test_metrics.json").is_file()
        if resume and done:
            continue
        results.append(train_one(opts, split, run_dir, resume=resume, callback=callback))
    if len(splits) > 1:
        atomic_write_json(out / "summary.json", summarize_runs(out, len(splits)))
    return results


def summarize_runs(out: Path, n: int) -> dict[str, Any]:
    """Mean and per-run 'all' AUC over the runs of a multi-run protocol, with a bootstrap-free spread."""
    rows = []
    for i in range(1, n + 1):
        p = out / f"run-{i}" / "test_metrics.json"
        if not p.is_file():
            continue
        for name, rep in json.loads(p.read_text()).items():
            allrow = next(r for r in rep["rows"] if r["name"] == "all")
            rows.append({"run": i, "test": name, "auc": allrow.get("auc"), "acc": allrow.get("acc"),
                         "eer": allrow.get("eer"), "auc_ci": allrow.get("auc_ci")})
    aucs = [r["auc"] for r in rows if r["auc"] is not None]
    return {"runs": rows, "mean_auc": float(np.mean(aucs)) if aucs else None,
            "std_auc": float(np.std(aucs)) if aucs else None}


def load_run_options(run_dir: str | Path) -> TrainOptions:
    """The options a run was started with (for --resume)."""
    p = Path(run_dir) / "config.json"
    if not p.is_file():
        raise MfclipError(f"{run_dir} is not a training run folder (no config.json)")
    return TrainOptions.from_dict(json.loads(p.read_text())["options"])
