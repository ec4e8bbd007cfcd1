"""PNG figures for eval and train runs: ROC, DET, score histograms, training curves.

Figures are drawn with matplotlib's object API on an Agg canvas created inside each function, so
importing this module (or the package) neither imports matplotlib nor touches the global pyplot
backend. Files are written atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from mfclip_cli.fsutil import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Normal-deviate DET axes cannot show rates of exactly 0 or 1; clip to this margin.
_DET_EPS = 1e-4
_DET_TICKS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99, 0.999)


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Figure, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def _two_class_curves(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], list[str]]:
    usable, skipped = [], []
    for name, (scores, labels) in curves.items():
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        y = np.asarray(labels).reshape(-1).astype(np.int64)
        if s.shape != y.shape:
            raise ValueError(f"curve {name!r}: scores and labels differ in length ({s.size} vs {y.size})")
        if np.any(y == 0) and np.any(y == 1):
            usable.append((name, s, y))
        else:
            skipped.append(name)
    if not usable:
        raise ValueError("no curve to draw: every entry has only real or only fake samples")
    return usable, skipped


def _note_skipped(fig: Figure, skipped: list[str]) -> None:
    if skipped:
        fig.text(0.01, 0.01, f"not drawn (one class only): {', '.join(skipped)}", fontsize=7, color="gray")


def plot_roc(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]], path: str | os.PathLike, title: str = "ROC"
) -> None:
    """Write a PNG with one ROC curve per entry ``name -> (scores, labels)``, AUC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    usable, skipped = _two_class_curves(curves)
    fig = _new_figure(5.5, 5.0)
    ax = fig.add_subplot()
    for name, s, y in usable:
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="gray")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (reals flagged)",
           ylabel="true positive rate (fakes caught)", title=title)  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    _note_skipped(fig, skipped)
    _save_png(fig, path)


def plot_det(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]], path: str | os.PathLike, title: str = "DET"
) -> None:
    """Write a PNG of DET curves (FNR vs FPR on normal-deviate axes), one per ``name -> (scores, labels)``."""
    from scipy.stats import norm
    from sklearn.metrics import det_curve

    usable, skipped = _two_class_curves(curves)
    fig = _new_figure(5.5, 5.0)
    ax = fig.add_subplot()
    for name, s, y in usable:
        fpr, fnr, _ = det_curve(y, s)
        x = norm.ppf(np.clip(fpr, _DET_EPS, 1 - _DET_EPS))
        z = norm.ppf(np.clip(fnr, _DET_EPS, 1 - _DET_EPS))
        ax.plot(x, z, lw=1.5, label=name)
    ticks = norm.ppf(_DET_TICKS)
    labels = [f"{100 * t:g}%" for t in _DET_TICKS]
    lim = norm.ppf([0.0005, 0.9995])
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.set(xlim=lim, ylim=lim, xlabel="false positive rate (reals flagged)",
           ylabel="false negative rate (fakes missed)", title=title)  # fmt: skip
    ax.plot(lim, lim, ls="--", lw=0.8, color="gray")  # FPR = FNR: where the EER is read
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    _note_skipped(fig, skipped)
    _save_png(fig, path)


def plot_score_histograms(
    scores: ArrayLike, labels: ArrayLike, threshold: float, path: str | os.PathLike, bins: int = 50
) -> None:
    """Write a PNG of the P(fake) distributions of reals and fakes on [0, 1], with the threshold marked."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length ({s.size} vs {y.size})")
    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    edges = np.linspace(0.0, 1.0, bins + 1)
    for value, name, color in ((0, "real", "tab:green"), (1, "fake", "tab:red")):
        part = s[y == value]
        if part.size:
            ax.hist(part, bins=edges, alpha=0.55, color=color, label=f"{name} (n={part.size})")
    ax.axvline(threshold, color="black", ls="--", lw=1.0, label=f"threshold {threshold:.3f}")
    ax.set(xlim=(0, 1), xlabel="score P(fake)", ylabel="samples", title="score distribution")
    ax.legend(fontsize=8)
    _save_png(fig, path)


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if v is not None and r.get("epoch") is not None:
            xs.append(float(r["epoch"]))
            ys.append(float(v))
    return xs, ys


def plot_training_curves(metrics_rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Write a PNG of losses (train, val) and validation AUC per epoch from metrics.jsonl rows.

    Rows carry ``epoch`` and any of ``train_loss``, ``val_loss``, ``val_auc``; missing or null values
    are left out of their curve.
    """
    if not metrics_rows:
        raise ValueError("no training metrics to plot (metrics.jsonl is empty)")
    fig = _new_figure(9.0, 3.8)
    ax_loss, ax_auc = fig.subplots(1, 2)
    for key, style in (("train_loss", "-o"), ("val_loss", "--s")):
        xs, ys = _series(metrics_rows, key)
        if xs:
            ax_loss.plot(xs, ys, style, ms=3, label=key)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    if ax_loss.lines:
        ax_loss.legend(fontsize=8)
    xs, ys = _series(metrics_rows, "val_auc")
    if xs:
        ax_auc.plot(xs, ys, "-o", ms=3, color="tab:purple", label="val AUC")
        best = int(np.argmax(ys))
        ax_auc.annotate(f"best {ys[best]:.4f}", (xs[best], ys[best]), fontsize=8,
                        textcoords="offset points", xytext=(0, -14), ha="center")  # fmt: skip
    ax_auc.set(xlabel="epoch", ylabel="AUC", title="validation AUC")
    for ax in (ax_loss, ax_auc):
        ax.grid(alpha=0.3)
    _save_png(fig, path)
