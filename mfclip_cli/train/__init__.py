"""`mfclip train`: protocols -> cached face crops -> MFCLIP training (SPEC §5) -> run directory.

Run directory: config.json, manifest.csv (+ per-split CSVs), skipped.csv, metrics.jsonl, last.safetensors
+ last_state.safetensors (resume), best.safetensors (threshold chosen on validation), curves.png,
test_metrics.json. Everything is written atomically; `--resume RUN_DIR` continues after a crash.

Rooms: ``options`` (:class:`TrainOptions`, results), ``setup`` (crop policy, model config, splits, frozen
towers), ``sampling`` (pseudo-fakes, balanced weights), ``state`` (resume state), ``loop`` (one run:
:func:`train_one`), ``run`` (every run of a protocol: :func:`run_training` -> :class:`TrainingResult`).
"""

from .loop import train_one
from .options import BALANCES, Callback, EpochLog, TrainOptions, TrainResult
from .run import TrainingResult, load_run_options, run_training, summarize_runs
from .sampling import (
    PSEUDO_FAKE_KINDS,
    pseudo_fake_kinds,
    reconstructed_entries,
    self_blended_entries,
    source_balanced_weights,
    swap_blended_entries,
)
from .setup import crop_policy_for, model_config_for, resolve_splits

__all__ = [
    "BALANCES", "PSEUDO_FAKE_KINDS", "Callback", "EpochLog", "TrainOptions", "TrainResult", "TrainingResult",
    "crop_policy_for",
    "load_run_options", "model_config_for", "pseudo_fake_kinds", "reconstructed_entries", "resolve_splits", "run_training", "self_blended_entries",
    "source_balanced_weights", "summarize_runs", "swap_blended_entries", "train_one",
]
