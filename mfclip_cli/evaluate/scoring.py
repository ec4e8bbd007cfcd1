"""The pure core of eval: crops -> P(fake) (:func:`score_entries`), scores -> metric rows (:func:`report_for_set`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.crops import CropEntry
from ..data.dataset import CropDataset
from ..metrics import BinaryMetrics, Row, binary_metrics, breakdown, video_level
from ..model.mfclip import MFCLIP

Pipeline = Callable[[np.ndarray], np.ndarray]
BatchHook = Callable[[int], None]


# --- pure core -----------------------------------------------------------------------------------------------
@torch.inference_mode()
def score_entries(model: MFCLIP, entries: list[CropEntry], *, batch_size: int = 32, workers: int = 0,
                  perturbation: str | Pipeline | None = None, device: str = "cpu",
                  on_batch: BatchHook | None = None) -> np.ndarray:
    """P(fake) for each cached crop, streamed from disk in batches (memory does not grow with the set).

    ``perturbation`` is a name from ``transforms.PERTURBATIONS`` or an RGB -> RGB callable applied to each
    crop; ``on_batch(n)`` is called after each batch of ``n`` crops (progress bars).
    """
    if not entries:
        return np.zeros(0)
    ds = CropDataset(entries, model.cfg.preprocess, augment=None, perturbation=perturbation)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                        persistent_workers=False)
    was_training = model.training
    model.eval()
    out = np.zeros(len(entries), dtype=np.float64)
    for image, noise, _y, idx in loader:
        with torch.autocast("cuda", dtype=torch.float16, enabled=str(device).startswith("cuda")):
            p = model.predict_proba(image.to(device), noise.to(device))
        out[idx.numpy()] = p.float().cpu().numpy()
        if on_batch is not None:
            on_batch(len(idx))
    model.train(was_training)
    return out


@dataclass(frozen=True)
class SetReport:
    """Metrics of one test set: the 'all' row and per-generator/kind/family rows, plus video level."""

    name: str
    rows: list[Row]
    video: BinaryMetrics | None
    n_skipped: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rows": [r.to_dict() for r in self.rows],
                "video": None if self.video is None else self.video.to_dict(), "skipped": self.n_skipped}

    def row(self, name: str = "all") -> Row:
        """The row called ``name`` (first match); KeyError if absent."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)


def report_for_set(name: str, entries: list[CropEntry], scores: np.ndarray, threshold: float,
                   bootstrap: int = 0, seed: int = 0, n_skipped: int = 0) -> SetReport:
    """Rows for one scored set; video-level metrics when several items share a group (frames of a video)."""
    labels = labels_of(entries)
    rows = breakdown(scores, labels, _attrs_of(entries), threshold, bootstrap=bootstrap, seed=seed)
    groups = [e.record.group for e in entries]
    video = None
    if len(set(groups)) < len(groups):
        sv, lv, _ = video_level(scores, labels, groups)
        video = binary_metrics(sv, lv, threshold)
    return SetReport(name, rows, video, n_skipped)


def labels_of(entries: list[CropEntry]) -> np.ndarray:
    """0 (real) / 1 (fake) per entry."""
    return np.array([e.record.y for e in entries], dtype=int)


def _attrs_of(entries: list[CropEntry]) -> dict[str, list[str]]:
    return {
        "generator": [e.record.generator for e in entries],
        "kind": [e.record.kind for e in entries],
        "family": [e.record.family for e in entries],
    }


def row_curves(entries: list[CropEntry], scores: np.ndarray, rows: list[Row]
               ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(scores, labels) per breakdown row, as the row was computed: its fake group against all reals."""
    labels = labels_of(entries)
    attrs = {k: np.asarray(v, dtype=object) for k, v in _attrs_of(entries).items()}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for r in rows:
        if r.group_by == "all":
            mask = np.ones(len(entries), dtype=bool)
            label = "all"
        else:
            mask = (labels == 0) | ((labels == 1) & (attrs[r.group_by] == r.name))
            label = f"{r.group_by}:{r.name}"
        curves[label] = (scores[mask], labels[mask])
    return curves


@dataclass(frozen=True)
class RobustnessRow:
    """The 'all' metrics of one test set with every crop degraded by one perturbation."""

    set_name: str
    perturbation: str
    metrics: BinaryMetrics

    @property
    def name(self) -> str:
        return f"robustness:{self.perturbation}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "set": self.set_name, "perturbation": self.perturbation,
                **self.metrics.to_dict()}


@dataclass(frozen=True)
class StandardizedCrop:
    """Crop pipeline for eval: optional robustness perturbation, then optional JPEG-90 standardization.

    A module-level class (not a closure) so DataLoader workers can pickle it under any start method.
    """

    perturbation: str | None = None
    standardize: bool = False

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        from ..data.transforms import get_perturbation, standardize

        if self.perturbation is not None:
            crop = get_perturbation(self.perturbation)(crop)
        if self.standardize:
            crop = standardize(crop, size=None, quality=90)
        return crop


def crop_pipeline(perturbation: str | None, standardize: bool) -> Pipeline | None:
    """The crop hook for score_entries; None when nothing is applied."""
    if perturbation is None and not standardize:
        return None
    return StandardizedCrop(perturbation, standardize)
