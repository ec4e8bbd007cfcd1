"""ROC, DET and score-histogram PNGs of scored sets (eval --plots)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.crops import CropEntry
from .scoring import SetReport, labels_of, row_curves

if TYPE_CHECKING:
    from .options import EvalResult
    from .suite import SuiteResult


# --- plots ---------------------------------------------------------------------------------------------------
def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "set"


def write_set_plots(out_dir: Path, report: SetReport, entries: list[CropEntry], scores: np.ndarray,
                    threshold: float) -> tuple[list[str], list[str]]:
    """ROC, DET (one curve per row) and score histogram PNGs of one set; (paths written, warnings)."""
    from ..plots import plot_det, plot_roc, plot_score_histograms

    stem = _slug(report.name)
    curves = row_curves(entries, scores, report.rows)
    written, warnings = [], []
    jobs = (
        (out_dir / f"{stem}_roc.png", lambda p: plot_roc(curves, p, title=f"ROC: {report.name}")),
        (out_dir / f"{stem}_det.png", lambda p: plot_det(curves, p, title=f"DET: {report.name}")),
        (out_dir / f"{stem}_hist.png", lambda p: plot_score_histograms(scores, labels_of(entries), threshold, p)),
    )
    for path, draw in jobs:
        try:
            draw(path)
            written.append(str(path))
        except ValueError as exc:  # e.g. a set with one class has no ROC: say so, keep the other figures
            warnings.append(f"plot {path.name} not written: {exc}")
    return written, warnings


def write_eval_plots(result: EvalResult, out_dir: str | Path) -> tuple[list[str], list[str]]:
    """ROC, DET and histogram PNGs of every set of an eval into ``out_dir``; (paths, warnings)."""
    written: list[str] = []
    warnings: list[str] = []
    for rep in result.sets:
        entries, scores = result.scored[rep.name]
        paths, warns = write_set_plots(Path(out_dir), rep, entries, scores, result.threshold.value)
        written += paths
        warnings += warns
    return written, warnings


def write_suite_plots(result: SuiteResult, out_dir: str | Path) -> tuple[list[str], list[str]]:
    """ROC, DET and histogram PNGs of every scored set into ``out_dir/<set>/``; (paths, warnings)."""
    written: list[str] = []
    warnings: list[str] = []
    for s in result.sets:
        if s.report is None or s.scores is None:
            continue
        folder = Path(out_dir) / _slug(s.name)
        folder.mkdir(parents=True, exist_ok=True)
        paths, warns = write_set_plots(folder, s.report, s.entries, s.scores, result.threshold)
        written += paths
        warnings += [f"{s.name}: {w}" for w in warns]
    return written, warnings
