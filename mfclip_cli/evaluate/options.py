"""What `mfclip eval` is asked (:class:`EvalOptions`) and what it gives (:class:`EvalResult`, JSON ``mfclip.eval/1``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..data.crops import CropEntry
from ..decision import threshold_method
from ..errors import MfclipError
from ..fsutil import jsonable
from ..model.metadata import ThresholdRecord
from .scoring import RobustnessRow, SetReport

SCHEMA_ID = "mfclip.eval/1"


# --- options and results -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalOptions:
    """Everything `mfclip eval` depends on (recorded in the result's settings)."""

    checkpoint: str
    data: str
    layout: str = "auto"
    split: str | None = None
    protocol: str | None = None
    test_generators: tuple[str, ...] | None = None
    seed: int = 0
    test_frac: float | None = None  # --split: the run's test share (None: the checkpoint's record, else 0.2)
    robustness: bool = False
    standardize: bool = False
    calibrate: str | None = None
    target_fpr: float | None = None
    fpr_per_source: bool = False  # with target_fpr: every real source of the calibration data keeps the rate
    calibrated_out: str | None = None
    bootstrap: int = 0
    strict: bool = False
    batch_size: int = 32
    workers: int = 2
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["test_generators"] is not None:
            d["test_generators"] = list(d["test_generators"])
        return d


@dataclass(frozen=True)
class EvalResult:
    """What one eval produced; ``to_json`` is the JSON form (schema ``mfclip.eval/1``).

    ``scored`` holds each set's crops and P(fake) (what ``--plots`` draws; not in the JSON); ``plots`` lists the
    figures the report layer wrote for it (``report.eval.write_eval_files``).
    """

    checkpoint: str
    checkpoint_sha256: str
    data: str
    manifest_sha256: str
    n_files: int
    threshold: ThresholdRecord
    overlap: int | None
    overlap_by_set: dict[str, int] | None
    overlap_warning: str | None
    sets: list[SetReport]
    robustness: list[RobustnessRow]
    skipped: dict[str, int]
    skipped_files: list[dict[str, str]]
    settings: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    calibrated_checkpoint: dict[str, Any] | None = None
    plots: list[str] = field(default_factory=list)
    scored: dict[str, tuple[list[CropEntry], np.ndarray]] = field(default_factory=dict, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        from .. import __version__

        return jsonable({
            "schema": SCHEMA_ID,
            "tool": {"name": "mfclip", "version": __version__},
            "checkpoint": {"path": self.checkpoint, "sha256": self.checkpoint_sha256},
            "data": {"path": self.data, "manifest_sha256": self.manifest_sha256, "n_files": self.n_files},
            "threshold": self.threshold.to_json(),
            "overlap": self.overlap,
            "overlap_by_set": self.overlap_by_set,
            "overlap_warning": self.overlap_warning,
            "warnings": list(self.warnings),
            "notes": list(self.notes),
            "sets": [s.to_dict() for s in self.sets],
            "robustness": [r.to_dict() for r in self.robustness],
            "skipped": dict(self.skipped),
            "skipped_files": list(self.skipped_files),
            "calibrated_checkpoint": self.calibrated_checkpoint,
            "plots": list(self.plots),
            "settings": self.settings,
        })


# --- choosing the sets ---------------------------------------------------------------------------------------
def check_scoring(bootstrap: int, batch_size: int, workers: int) -> None:
    """The scoring settings `eval --data` and `eval --suite` share."""
    if bootstrap < 0:
        raise MfclipError(f"--bootstrap must be >= 0, got {bootstrap}")
    if batch_size < 1:
        raise MfclipError(f"--batch-size must be >= 1, got {batch_size}")
    if workers < 0:
        raise MfclipError(f"--workers must be >= 0, got {workers}")


def check_options(opts: EvalOptions) -> None:
    from ..data.manifest import SPLITS

    if opts.split is not None and opts.protocol is not None:
        raise MfclipError("pass --split or --protocol, not both")
    if opts.split is not None and opts.split not in SPLITS:
        raise MfclipError(f"unknown --split {opts.split!r}; valid: {', '.join(SPLITS)}")
    if opts.test_generators and opts.protocol != "cross-generator":
        raise MfclipError("--test-generators only applies with --protocol cross-generator")
    if opts.target_fpr is not None and not opts.calibrate:
        raise MfclipError("--target-fpr chooses the threshold of --calibrate VALROOT; pass --calibrate too")
    threshold_method(opts.target_fpr, opts.fpr_per_source)
    if opts.target_fpr is not None and not 0.0 <= opts.target_fpr <= 1.0:
        raise MfclipError(f"--target-fpr must be in [0, 1], got {opts.target_fpr}")
    if opts.calibrated_out and not opts.calibrate:
        raise MfclipError("--calibrated-out names the checkpoint --calibrate writes; pass --calibrate too")
    check_scoring(opts.bootstrap, opts.batch_size, opts.workers)
