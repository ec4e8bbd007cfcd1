"""The decision rule, written once: when a score is fake, how a threshold is chosen, which threshold applies.

Scores are P(fake) in [0, 1]. A score at or above the threshold is fake (:func:`is_fake`); a score within
the uncertain band of the threshold is "uncertain" (:func:`decide`). The threshold is chosen on validation
data (:func:`choose_threshold`: the EER point or a target false-positive rate) and saved in the checkpoint;
at inference the CLI may override it and the crop policy (:func:`resolve_inference`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import roc_curve

from .errors import MfclipError
from .faces.types import CropPolicy
from .model.metadata import ThresholdRecord
from .precedence import overlay

THRESHOLD_METHODS = ("eer", "target_fpr", "target_fpr_per_source")
Verdict = Literal["fake", "real", "uncertain"]


@overload
def is_fake(score: float, threshold: float) -> bool: ...
@overload
def is_fake(score: np.ndarray, threshold: float) -> np.ndarray: ...
def is_fake(score: float | np.ndarray, threshold: float) -> bool | np.ndarray:
    """True where a score is flagged fake; a score exactly at the threshold is fake (arrays elementwise)."""
    return score >= threshold


def decide(score: float, threshold: float, band: float = 0.0) -> Verdict:
    """The verdict of one score: "uncertain" within ``band`` of the threshold, else "fake" or "real".

    |score - threshold| < band → "uncertain"; otherwise :func:`is_fake` decides.
    """
    if band < 0:
        raise ValueError(f"uncertain_band must be >= 0, got {band}")
    if abs(score - threshold) < band:
        return "uncertain"
    return "fake" if is_fake(score, threshold) else "real"


def scores_and_labels(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validated 1-D float scores and 0/1 int labels of equal length."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.size} vs {y.size}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    if y.size and not np.all((y == 0) | (y == 1)):
        raise ValueError(f"labels must be 0 (real) or 1 (fake); got values {sorted(set(y.tolist()))[:5]}")
    return s, y.astype(np.int64)


def has_both_classes(y: np.ndarray) -> bool:
    """Whether 0/1 labels hold at least one real and one fake."""
    return bool(np.any(y == 1) and np.any(y == 0))


def equal_error_rate(scores: ArrayLike, labels: ArrayLike) -> tuple[float | None, float | None]:
    """(EER, threshold) where the false-positive and false-negative rates meet; (None, None) for one class.

    The ROC is taken at every distinct score (sklearn ``roc_curve`` without dropping points). Between the
    last operating point with FNR > FPR and the first with FNR <= FPR both rates are interpolated
    linearly and the EER is their value at the crossing; the threshold is interpolated with the same
    weight between the two points' score thresholds (when the crossing lies before the highest score,
    that score is the threshold).
    """
    s, y = scores_and_labels(scores, labels)
    if not has_both_classes(y):
        return None, None
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    fnr = 1.0 - tpr
    diff = fnr - fpr  # starts at 1 (nothing flagged), ends at -1 (everything flagged); non-increasing
    i = int(np.argmax(diff <= 0))
    if diff[i] == 0:
        return float(fpr[i]), float(thr[i])
    w = diff[i - 1] / (diff[i - 1] - diff[i])
    eer = fpr[i - 1] + w * (fpr[i] - fpr[i - 1])
    if np.isfinite(thr[i - 1]):
        threshold = thr[i - 1] + w * (thr[i] - thr[i - 1])
    else:
        threshold = thr[i]
    return float(eer), float(threshold)


def threshold_method(target_fpr: float | None, per_source: bool = False) -> str:
    """The method of :func:`choose_threshold` that a verb's ``--target-fpr`` / ``--fpr-per-source`` ask for."""
    if target_fpr is None:
        if per_source:
            raise MfclipError("--fpr-per-source needs --target-fpr F (the false-positive rate each real source keeps)")
        return "eer"
    return "target_fpr_per_source" if per_source else "target_fpr"


def choose_threshold(
    scores: ArrayLike, labels: ArrayLike, method: str = "eer", target_fpr: float | None = None,
    sources: list[str] | None = None,
) -> tuple[float, ThresholdRecord]:
    """A decision threshold chosen on validation data, and the record of how (stored in the checkpoint).

    ``eer``: the EER threshold (needs both classes). ``target_fpr``: the lowest threshold whose
    false-positive rate on the reals is at most ``target_fpr`` (needs reals only); when even the
    highest real must not be flagged the threshold sits just above it. ``target_fpr_per_source``: the
    lowest threshold at which no real source (``sources``, one name per sample) has a false-positive rate
    above ``target_fpr``: the highest of the sources' ``target_fpr`` thresholds.
    """
    s, y = scores_and_labels(scores, labels)
    if method == "target_fpr_per_source":
        if sources is None or len(sources) != s.size:
            raise ValueError("method 'target_fpr_per_source' needs one source name per score")
        names = np.asarray(sources, dtype=object)
        per_source = {}
        for name in sorted(set(names[y == 0].tolist())):
            keep = (y == 1) | (names == name)
            per_source[name] = choose_threshold(s[keep], y[keep], "target_fpr", target_fpr)[0]
        if not per_source:
            raise ValueError("method 'target_fpr_per_source' needs real samples to measure false-positive rates")
        thr = max(per_source.values())
        worst = max(per_source, key=lambda k: (per_source[k], k))
        real, fake = s[y == 0], s[y == 1]
        return thr, ThresholdRecord(
            value=thr, method="target_fpr_per_source", target_fpr=float(target_fpr),
            fpr=float(np.mean(is_fake(real, thr))), tpr=float(np.mean(is_fake(fake, thr))) if fake.size else None,
            extra={"binding_source": worst, "n_sources": len(per_source)},
        )
    if method == "eer":
        if target_fpr is not None:
            raise ValueError("target_fpr is only used with method='target_fpr'")
        eer, thr = equal_error_rate(s, y)
        if eer is None or thr is None:
            raise ValueError("method 'eer' needs both real and fake samples to choose a threshold")
        return thr, ThresholdRecord(value=float(thr), method="eer", eer=float(eer))
    if method == "target_fpr":
        if target_fpr is None or not 0.0 <= target_fpr <= 1.0:
            raise ValueError(f"method 'target_fpr' needs target_fpr in [0, 1], got {target_fpr}")
        real = np.sort(s[y == 0])
        if real.size == 0:
            raise ValueError("method 'target_fpr' needs real samples to measure the false-positive rate")
        candidates = np.append(np.unique(s), np.nextafter(s.max(), np.inf))
        n_flagged = real.size - np.searchsorted(real, candidates, side="left")
        fpr = n_flagged / real.size
        # fpr is non-increasing in the threshold: take the first (lowest) candidate under the target.
        ok = n_flagged <= target_fpr * real.size + 1e-9
        thr = float(candidates[int(np.argmax(ok))])
        fake = s[y == 1]
        return thr, ThresholdRecord(
            value=thr, method="target_fpr", target_fpr=float(target_fpr), fpr=float(fpr[int(np.argmax(ok))]),
            tpr=float(np.mean(is_fake(fake, thr))) if fake.size else None,
        )
    raise ValueError(f"unknown threshold method {method!r}; valid: {', '.join(THRESHOLD_METHODS)}")


@dataclass(frozen=True)
class Inference:
    """What decides a scan's verdicts: the threshold and how faces are cropped, after the CLI's overrides."""

    threshold: float
    crop: CropPolicy


def override_crop(policy: CropPolicy, **flags: Any) -> CropPolicy:
    """``policy`` with each field given a non-None value in ``flags`` replaced (``precedence.overlay``)."""
    return overlay(policy, **flags)


def resolve_inference(
    threshold: float,
    crop: CropPolicy,
    *,
    cli_threshold: float | None = None,
    min_face: int | None = None,
    detector: str | None = None,
) -> Inference:
    """The threshold and crop policy a scan uses: the checkpoint's, each replaced by a CLI flag when given.

    Precedence, lowest first: what the checkpoint (or ONNX manifest) records < CLI flags. A flag left
    unset (None) keeps the checkpoint's value.
    """
    return Inference(
        threshold=threshold if cli_threshold is None else cli_threshold,
        crop=override_crop(crop, min_face=min_face, detector=detector),
    )
