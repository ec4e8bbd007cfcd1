"""Detection metrics as pure functions of arrays: AUC, AP, EER, ACC, bootstrap CIs, per-group rows.

Conventions: ``scores`` are P(fake); ``labels`` are 1 = fake, 0 = real; a sample is predicted fake by
:func:`mfclip_cli.decision.is_fake`. A metric that is undefined for the input (e.g. AUC with one class) is ``None``,
never NaN, so results serialise to strict JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score, roc_auc_score

from .decision import equal_error_rate, has_both_classes, is_fake, scores_and_labels


def roc_auc(scores: ArrayLike, labels: ArrayLike) -> float | None:
    """ROC-AUC (sklearn's roc_auc_score), or None unless both classes are present."""
    s, y = scores_and_labels(scores, labels)
    if not has_both_classes(y):
        return None
    return float(roc_auc_score(y, s))


def average_precision(scores: ArrayLike, labels: ArrayLike) -> float | None:
    """Average precision with fake as the positive class, or None unless both classes are present."""
    s, y = scores_and_labels(scores, labels)
    if not has_both_classes(y):
        return None
    return float(average_precision_score(y, s))


def accuracy_at(scores: ArrayLike, labels: ArrayLike, threshold: float) -> float | None:
    """Fraction of samples classified correctly (fake by :func:`~mfclip_cli.decision.is_fake`); None if empty."""
    s, y = scores_and_labels(scores, labels)
    if s.size == 0:
        return None
    return float(np.mean(is_fake(s, threshold).astype(np.int64) == y))


def _class_accuracies(s: np.ndarray, y: np.ndarray, threshold: float) -> tuple[float | None, float | None]:
    real, fake = s[y == 0], s[y == 1]
    real_acc = float(np.mean(~is_fake(real, threshold))) if real.size else None
    fake_acc = float(np.mean(is_fake(fake, threshold))) if fake.size else None
    return real_acc, fake_acc


def _weighted_auc_factory(s: np.ndarray, y: np.ndarray):
    """A function of per-sample weights (real_w, fake_w) returning the Mann-Whitney AUC.

    Ranks are found once; each call is O(n), which makes thousands of bootstrap resamples cheap.
    Ties count one half, as in roc_auc_score.
    """
    real = np.sort(s[y == 0])
    order = np.argsort(s[y == 0], kind="stable")
    fake = s[y == 1]
    below = np.searchsorted(real, fake, side="left")
    at_or_below = np.searchsorted(real, fake, side="right")

    def auc(real_w: np.ndarray, fake_w: np.ndarray) -> float:
        cum = np.concatenate(([0.0], np.cumsum(real_w[order])))
        wins = cum[below] + 0.5 * (cum[at_or_below] - cum[below])
        return float(np.dot(fake_w, wins) / (real_w.sum() * fake_w.sum()))

    return auc


def bootstrap_auc_ci(
    scores: ArrayLike, labels: ArrayLike, n: int, seed: int, alpha: float = 0.05
) -> tuple[float, float] | None:
    """Percentile (1 - alpha) confidence interval of the AUC from ``n`` stratified bootstrap resamples.

    Reals and fakes are resampled separately with replacement, so every resample keeps the class counts.
    None when ``n <= 0`` or only one class is present. Deterministic for a given ``seed``.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    s, y = scores_and_labels(scores, labels)
    if n <= 0 or not has_both_classes(y):
        return None
    n_real, n_fake = int(np.sum(y == 0)), int(np.sum(y == 1))
    auc_of = _weighted_auc_factory(s, y)
    rng = np.random.default_rng(seed)
    aucs = np.empty(n, dtype=np.float64)
    for b in range(n):
        real_w = np.bincount(rng.integers(0, n_real, n_real), minlength=n_real).astype(np.float64)
        fake_w = np.bincount(rng.integers(0, n_fake, n_fake), minlength=n_fake).astype(np.float64)
        aucs[b] = auc_of(real_w, fake_w)
    lo, hi = np.quantile(aucs, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


@dataclass(frozen=True)
class BinaryMetrics:
    """Real-vs-fake metrics of one set of samples; undefined values are None."""

    n: int
    n_real: int
    n_fake: int
    auc: float | None
    ap: float | None
    eer: float | None
    eer_threshold: float | None
    acc: float
    real_acc: float | None
    fake_acc: float | None
    threshold: float
    auc_ci: tuple[float, float] | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (auc_ci as a two-element list or None)."""
        return {
            "n": self.n,
            "n_real": self.n_real,
            "n_fake": self.n_fake,
            "auc": self.auc,
            "ap": self.ap,
            "eer": self.eer,
            "eer_threshold": self.eer_threshold,
            "acc": self.acc,
            "real_acc": self.real_acc,
            "fake_acc": self.fake_acc,
            "threshold": self.threshold,
            "auc_ci": list(self.auc_ci) if self.auc_ci is not None else None,
        }


def binary_metrics(
    scores: ArrayLike,
    labels: ArrayLike,
    threshold: float,
    bootstrap: int = 0,
    seed: int = 0,
    alpha: float = 0.05,
) -> BinaryMetrics:
    """All headline metrics of one sample set at ``threshold`` (+ a bootstrap AUC CI if ``bootstrap > 0``)."""
    s, y = scores_and_labels(scores, labels)
    if s.size == 0:
        raise ValueError("cannot compute metrics of an empty set of samples")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    eer, eer_thr = equal_error_rate(s, y)
    real_acc, fake_acc = _class_accuracies(s, y, threshold)
    acc = float(np.mean(is_fake(s, threshold).astype(np.int64) == y))
    return BinaryMetrics(
        n=int(s.size),
        n_real=int(np.sum(y == 0)),
        n_fake=int(np.sum(y == 1)),
        auc=roc_auc(s, y),
        ap=average_precision(s, y),
        eer=eer,
        eer_threshold=eer_thr,
        acc=acc,
        real_acc=real_acc,
        fake_acc=fake_acc,
        threshold=float(threshold),
        auc_ci=bootstrap_auc_ci(s, y, bootstrap, seed, alpha) if bootstrap > 0 else None,
    )


def video_level(
    scores: ArrayLike, labels: ArrayLike, groups: Sequence[Any]
) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """(mean score per group, label per group, group ids) in order of each group's first sample.

    Raises ValueError when a group mixes real and fake labels (a split or manifest error).
    """
    s, y = scores_and_labels(scores, labels)
    groups = list(groups)
    if len(groups) != s.size:
        raise ValueError(f"groups and scores differ in length: {len(groups)} vs {s.size}")
    index: dict[Any, int] = {}
    inverse = np.empty(s.size, dtype=np.int64)
    for k, g in enumerate(groups):
        inverse[k] = index.setdefault(g, len(index))
    m = len(index)
    counts = np.bincount(inverse, minlength=m)
    means = np.bincount(inverse, weights=s, minlength=m) / np.maximum(counts, 1)
    fakes = np.bincount(inverse, weights=y, minlength=m)
    mixed = (fakes > 0) & (fakes < counts)
    ids = list(index)
    if np.any(mixed):
        bad = [ids[j] for j in np.flatnonzero(mixed)[:5]]
        raise ValueError(
            f"groups mix real and fake samples (first: {bad}); check the manifest's group column"
        )
    return means, (fakes > 0).astype(np.int64), ids


@dataclass(frozen=True)
class Row:
    """One line of a breakdown table: which subset (``group_by`` = ``name``) and its metrics."""

    name: str
    group_by: str
    metrics: BinaryMetrics

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready dict: name, group_by, then the metric fields."""
        return {"name": self.name, "group_by": self.group_by, **self.metrics.to_dict()}


def breakdown(
    scores: ArrayLike,
    labels: ArrayLike,
    attrs: Mapping[str, Sequence[str]],
    threshold: float,
    bootstrap: int = 0,
    seed: int = 0,
) -> list[Row]:
    """Rows "all", then for each attribute and each of its values among fakes: that fake group vs ALL reals.

    ``attrs`` maps an attribute name (e.g. "generator", "kind", "family") to one value per sample; the
    values of real samples are ignored (labels decide what is real). Values are listed in sorted order.
    """
    s, y = scores_and_labels(scores, labels)
    rows = [Row("all", "all", binary_metrics(s, y, threshold, bootstrap, seed))]
    is_real = y == 0
    for attr, values in attrs.items():
        v = np.asarray([str(x) for x in values], dtype=object)
        if v.size != s.size:
            raise ValueError(f"attribute {attr!r} has {v.size} values for {s.size} samples")
        for value in sorted(set(v[y == 1].tolist())):
            mask = is_real | ((y == 1) & (v == value))
            rows.append(Row(value, attr, binary_metrics(s[mask], y[mask], threshold, bootstrap, seed)))
    return rows
