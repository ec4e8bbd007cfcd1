"""`eval --calibrate`: choose a new threshold on validation data and write the calibrated checkpoint."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..decision import choose_threshold, threshold_method
from ..errors import MfclipError
from ..events import EventHook
from ..model.metadata import CheckpointMeta, ThresholdRecord
from ..model.mfclip import MFCLIP

if TYPE_CHECKING:
    from ..data.manifest import Record
    from ..faces.types import CropPolicy
from .options import EvalOptions
from .scoring import labels_of
from .tasks import crop_records, score_records


def default_calibrated_path(checkpoint: str) -> Path:
    """``<dir>/<stem>.calibrated.safetensors`` next to the input checkpoint."""
    p = Path(checkpoint)
    return p.with_name(f"{p.stem}.calibrated.safetensors")


def calibration_records(root: str) -> list[Record]:
    from ..data.layouts import read_dataset

    records = read_dataset(root, "auto")
    if any(r.split is not None for r in records):
        val = [r for r in records if r.split == "val"]
        if not val:
            raise MfclipError(f"--calibrate {root}: the data has preset splits but no 'val' records; "
                              f"point --calibrate at a validation folder")
        return val
    return records


def calibrate_threshold(root: str, model: MFCLIP, meta: CheckpointMeta, opts: EvalOptions, policy: CropPolicy,
                        device: str, on_event: EventHook) -> tuple[ThresholdRecord, dict[str, Any], set[str]]:
    """Choose a threshold on the data at ``root`` and write the calibrated checkpoint.

    Returns (new threshold record, {path, sha256, n, skipped}, content-hash prefixes of the calibration files).
    """
    from ..fsutil import sha256_file
    from ..model.checkpoint import save_checkpoint

    out = Path(opts.calibrated_out) if opts.calibrated_out else default_calibrated_path(opts.checkpoint)
    if out.resolve() == Path(opts.checkpoint).resolve():
        raise MfclipError(f"--calibrated-out {out} is the input checkpoint; choose another path")
    records = calibration_records(root)
    entries, skipped = crop_records(records, policy, opts.workers, on_event, "calibration crops")
    if not entries:
        raise MfclipError(f"--calibrate {root}: no usable file ({len(skipped)} skipped, e.g. "
                          f"{skipped[0].message if skipped else 'none'})")
    scores = score_records(model, entries, opts, device, on_event, "calibration scores")
    labels = labels_of(entries)
    try:
        _, chosen = choose_threshold(scores, labels, threshold_method(opts.target_fpr, opts.fpr_per_source),
                                     opts.target_fpr,
                                     sources=[e.record.source for e in entries])
    except ValueError as exc:
        raise MfclipError(f"--calibrate {root}: {exc}") from None
    new_meta = meta.calibrated(replace(chosen, data=str(root), n_real=int(np.sum(labels == 0)),
                                       n_fake=int(np.sum(labels == 1)), standardize=opts.standardize))
    save_checkpoint(out, model, meta=new_meta, half=meta.dtype == "float16")
    written = {"path": str(out), "sha256": sha256_file(out), "n": len(entries), "skipped": len(skipped)}
    return new_meta.decision_threshold(), written, {e.sha256[:16] for e in entries}
