"""Cropping and scoring a set as tasks of an optional Rich progress bar."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from ..data.crops import CropEntry, SkippedEntry
from ..model.mfclip import MFCLIP

if TYPE_CHECKING:
    from rich.progress import Progress

    from ..data.manifest import Record
    from ..faces.types import CropPolicy
from .options import EvalOptions
from .scoring import crop_pipeline, score_entries


# --- cropping, overlap, calibration --------------------------------------------------------------------------
def crop_records(records: list[Record], policy: CropPolicy, workers: int, progress: Progress | None, what: str
          ) -> tuple[list[CropEntry], list[SkippedEntry]]:
    from ..data.crops import CropCache, prepare_crops
    from ..paths import cache_dir

    task = progress.add_task(what, total=len(records)) if progress is not None else None
    on_done = (lambda: progress.advance(task)) if progress is not None and task is not None else None
    try:
        return prepare_crops(records, policy, CropCache(cache_dir() / "crops", policy), workers=workers,
                             on_done=on_done)
    finally:
        if progress is not None and task is not None:
            progress.remove_task(task)


def score_records(model: MFCLIP, entries: list[CropEntry], opts: EvalOptions, device: str, progress: Progress | None,
           what: str, perturbation: str | None = None) -> np.ndarray:
    task = progress.add_task(what, total=len(entries)) if progress is not None else None
    on_batch = (lambda n: progress.advance(task, n)) if progress is not None and task is not None else None
    try:
        return score_entries(model, entries, batch_size=opts.batch_size, workers=opts.workers, device=device,
                             perturbation=crop_pipeline(perturbation, opts.standardize), on_batch=on_batch)
    finally:
        if progress is not None and task is not None:
            progress.remove_task(task)


# --- driver --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def progress_bar(enabled: bool) -> Iterator[Progress | None]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        yield bar
