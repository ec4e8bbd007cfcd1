"""Cropping and scoring a set as tasks that report their progress as "progress" events."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..data.crops import CropEntry, SkippedEntry
from ..events import EventHook
from ..model.mfclip import MFCLIP
from .options import EvalOptions
from .scoring import crop_pipeline, score_entries

if TYPE_CHECKING:
    from ..data.manifest import Record
    from ..faces.types import CropPolicy


def progress(on_event: EventHook, what: str, done: int, total: int) -> None:
    """The progress event of :func:`~mfclip_cli.evaluate.run_eval`: ``done`` of ``total`` items of the task
    ``what`` ("face crops", "scoring SET", "SET · PERTURBATION", "calibration crops", "calibration scores")."""
    on_event("progress", {"what": what, "done": done, "total": total})


def crop_records(records: list[Record], policy: CropPolicy, workers: int, on_event: EventHook, what: str
                 ) -> tuple[list[CropEntry], list[SkippedEntry]]:
    """Face crops of ``records`` (cached), and the files that gave none."""
    from ..data.crops import CropCache, prepare_crops
    from ..paths import cache_dir

    done = [0]
    progress(on_event, what, 0, len(records))

    def on_done() -> None:
        done[0] += 1
        progress(on_event, what, done[0], len(records))

    return prepare_crops(records, policy, CropCache(cache_dir() / "crops", policy), workers=workers,
                         on_done=on_done)


def score_records(model: MFCLIP, entries: list[CropEntry], opts: EvalOptions, device: str,
                  on_event: EventHook, what: str, perturbation: str | None = None) -> np.ndarray:
    """P(fake) of each entry, with the options' crop pipeline (and ``perturbation``) applied."""
    done = [0]
    progress(on_event, what, 0, len(entries))

    def on_batch(n: int) -> None:
        done[0] += n
        progress(on_event, what, done[0], len(entries))

    return score_entries(model, entries, batch_size=opts.batch_size, workers=opts.workers, device=device,
                         perturbation=crop_pipeline(perturbation, opts.standardize), on_batch=on_batch)
