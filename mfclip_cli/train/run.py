"""The driver of `mfclip train`: every run of a protocol (:func:`run_training`), summaries, resuming options."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..data.transforms import parity_chain, train_augment
from ..decision import threshold_method
from ..errors import MfclipError
from ..events import EventHook, no_event
from ..fsutil import atomic_write_json, jsonable
from .loop import train_one
from .options import BALANCES, TRAIN_FAKES, WEIGHT_AVERAGES, TrainOptions, TrainResult
from .sampling import pseudo_fake_kinds
from .setup import model_config_for, process_rank, resolve_splits


@dataclass(frozen=True)
class TrainingResult:
    """What `mfclip train` produced: the run folder and each run trained by this call (a resumed protocol
    leaves out the runs that had already finished); ``summary`` is summary.json of a multi-run protocol."""

    out: str
    runs: tuple[TrainResult, ...]
    summary: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return jsonable({"out": self.out, "runs": [asdict(r) for r in self.runs], "summary": self.summary})


# --- driver --------------------------------------------------------------------------------------------------
def run_training(opts: TrainOptions, *, on_event: EventHook = no_event, resume: bool = False) -> TrainingResult:
    """Train every run of the protocol (one for most; one per held-out pair for leave-source-out).

    Events (``on_event(event, payload)``): "run_start" per run, then those of :func:`train_one` ("crops_start",
    "crop_done", "data", "stage", "resumed", "epoch_start", "step", "epoch_end", "early_stop", "tests").
    """
    train_augment(opts.augment)  # unknown names fail before anything is written
    parity_chain(opts.parity)
    pseudo_fake_kinds(opts.pseudo_fakes)
    if opts.balance not in BALANCES:
        raise MfclipError(f"unknown --balance {opts.balance!r}; valid: {', '.join(BALANCES)}")
    if opts.weight_average not in WEIGHT_AVERAGES:
        raise MfclipError(f"unknown --weight-average {opts.weight_average!r}; valid: {', '.join(WEIGHT_AVERAGES)}")
    if opts.train_fakes not in TRAIN_FAKES:
        raise MfclipError(f"unknown --train-fakes {opts.train_fakes!r}; valid: {', '.join(TRAIN_FAKES)}")
    if opts.train_fakes == "pseudo" and not pseudo_fake_kinds(opts.pseudo_fakes):
        raise MfclipError("--train-fakes pseudo trains on pseudo-fakes alone: also pass --pseudo-fakes "
                          "(e.g. sbi-soft)")
    if not 0.0 <= opts.distill_weight <= 1.0:
        raise MfclipError(f"--distill-weight must be between 0 and 1, got {opts.distill_weight}")
    missing = [t for t in opts.teachers if not Path(t).is_file()]
    if missing:
        raise MfclipError(f"no teacher checkpoint at {', '.join(missing)} (--teacher takes .safetensors files)")
    if opts.target_fpr is not None and not 0.0 < opts.target_fpr < 1.0:
        raise MfclipError(f"--target-fpr must be between 0 and 1, got {opts.target_fpr}")
    threshold_method(opts.target_fpr, opts.fpr_per_source)
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
        on_event("run_start", {"run": i, "of": len(splits), "name": split.name, "dir": str(run_dir)})
        done = (run_dir / "test_metrics.json").is_file()
        if resume and done:
            continue
        results.append(train_one(opts, split, run_dir, resume=resume, callback=on_event))
    summary = None
    if len(splits) > 1:
        summary = summarize_runs(out, len(splits))
        atomic_write_json(out / "summary.json", summary)
    return TrainingResult(out=str(out), runs=tuple(results), summary=summary)


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
