"""`eval --suite DIR`: every sub-folder of DIR one dataset, scored at the checkpoint's threshold."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.crops import CropEntry
from ..decision import is_fake
from ..errors import MfclipError
from ..events import EventHook, no_event
from ..fsutil import jsonable
from ..metrics import Row, binary_metrics
from ..model.mfclip import MFCLIP

if TYPE_CHECKING:

    from ..data.manifest import Record
    from ..faces.types import CropPolicy
from .options import check_scoring
from .overlap import count_overlap
from .scoring import RobustnessRow, SetReport, crop_pipeline, labels_of, report_for_set, score_entries

# --- suite: every sub-folder of a folder is one dataset ------------------------------------------------------
SUITE_SCHEMA_ID = "mfclip.eval-suite/1"


@dataclass(frozen=True)
class SuiteOptions:
    """What `mfclip eval --suite` is asked (recorded in the result's settings, but for the two paths).

    ``checkpoint`` may be None only for :func:`run_suite_model` (a model already in memory); ``device`` may be
    'auto' for :func:`run_suite`.
    """

    checkpoint: str | None
    suite: str
    bootstrap: int = 0
    seed: int = 0
    batch_size: int = 32
    device: str = "cpu"
    workers: int = 2
    robustness: bool = False

    def check(self) -> None:
        check_scoring(self.bootstrap, self.batch_size, self.workers)


@dataclass(frozen=True)
class SourceRealAcc:
    """The share of one real source's images the model calls real at the threshold (1 - its FPR)."""

    source: str
    n: int
    real_acc: float

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "n": self.n, "real_acc": self.real_acc}


@dataclass(frozen=True)
class SuiteSetResult:
    """One set of a suite: its report (None when it could not be scored, then ``error`` says why)."""

    name: str
    path: str
    n_real: int  # usable files after cropping (files found, when the set was not read at all)
    n_fake: int
    report: SetReport | None
    error: str | None = None
    real_sources: list[SourceRealAcc] = field(default_factory=list)
    robustness: list[RobustnessRow] = field(default_factory=list)
    skipped_files: list[dict[str, str]] = field(default_factory=list)
    overlap: int | None = None
    # the scored crops and their P(fake), for plots and further analysis (not in to_json)
    entries: list[CropEntry] = field(default_factory=list, repr=False, compare=False)
    scores: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def scored(self) -> bool:
        return self.report is not None

    @property
    def rows(self) -> list[Row]:
        """The report's rows ('all', then per generator / kind / family); empty when not scored."""
        return [] if self.report is None else list(self.report.rows)

    @property
    def auc(self) -> float | None:
        return None if self.report is None else self.report.row("all").metrics.auc

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "path": self.path, "status": "scored" if self.scored else "not_scored",
            "error": self.error, "n_real": self.n_real, "n_fake": self.n_fake,
            "rows": [r.to_dict() for r in self.rows],
            "video": None if self.report is None or self.report.video is None else self.report.video.to_dict(),
            "real_sources": [s.to_dict() for s in self.real_sources],
            "robustness": [r.to_dict() for r in self.robustness],
            "skipped": len(self.skipped_files), "skipped_files": list(self.skipped_files),
            "overlap": self.overlap,
        }


@dataclass(frozen=True)
class SuiteSummary:
    """Across the sets that could be scored: mean and min AUC, and the worst real source's real-ACC."""

    n_sets: int
    n_sets_scored: int
    mean_auc: float | None
    min_auc: float | None
    min_auc_set: str | None
    worst_real_acc: float | None
    worst_real_set: str | None
    worst_real_source: str | None
    unscored_sets: list[str]

    @property
    def n_sets_unscored(self) -> int:
        return self.n_sets - self.n_sets_scored

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "n_sets_unscored": self.n_sets_unscored}


@dataclass(frozen=True)
class SuiteResult:
    """What a suite eval produced; ``to_json`` is the JSON form (schema ``mfclip.eval-suite/1``)."""

    suite: str
    checkpoint: str | None
    checkpoint_sha256: str | None
    threshold: float
    sets: list[SuiteSetResult]
    summary: SuiteSummary
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def set_result(self, name: str) -> SuiteSetResult:
        """The set called ``name``; KeyError listing the set names otherwise."""
        for s in self.sets:
            if s.name == name:
                return s
        raise KeyError(f"no set {name!r}; sets: {', '.join(s.name for s in self.sets)}")

    def to_json(self) -> dict[str, Any]:
        from .. import __version__

        return jsonable({
            "schema": SUITE_SCHEMA_ID,
            "tool": {"name": "mfclip", "version": __version__},
            "checkpoint": {"path": self.checkpoint, "sha256": self.checkpoint_sha256},
            "suite": {"path": self.suite},
            "threshold": self.threshold,
            "sets": [s.to_json() for s in self.sets],
            "summary": self.summary.to_dict(),
            "notes": list(self.notes),
            "settings": self.settings,
        })


def suite_set_dirs(suite_dir: str | Path) -> list[Path]:
    """The set folders of a suite: its visible sub-folders, sorted by name."""
    root = Path(suite_dir)
    if not root.is_dir():
        raise MfclipError(f"--suite {root} is not a folder; pass a folder whose sub-folders are dataset roots")
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise MfclipError(f"--suite {root} has no sub-folders; each sub-folder must be a dataset root "
                          f"(real/<source>/, fake/<kind>/<generator>/)")
    return dirs


def real_acc_by_source(entries: list[CropEntry], scores: np.ndarray, threshold: float) -> list[SourceRealAcc]:
    """Real-ACC of each real source (records' ``source``) at ``threshold``, sorted by source name."""
    by_source: dict[str, list[float]] = {}
    for e, s in zip(entries, scores):
        if e.record.y == 0:
            by_source.setdefault(e.record.source, []).append(float(s))
    return [SourceRealAcc(src, len(v), float(np.mean(~is_fake(np.asarray(v), threshold))))
            for src, v in sorted(by_source.items())]


def summarize_suite(sets: list[SuiteSetResult]) -> SuiteSummary:
    """Mean / min AUC and worst real-ACC over the scored sets (first set wins a tie)."""
    scored = [s for s in sets if s.scored and s.auc is not None]
    scored_names = {s.name for s in scored}
    aucs = [float(s.auc) for s in scored]  # type: ignore[arg-type]
    worst: tuple[float, str, str] | None = None
    for s in scored:
        for src in s.real_sources:
            if worst is None or src.real_acc < worst[0]:
                worst = (src.real_acc, s.name, src.source)
    low = min(scored, key=lambda s: s.auc) if scored else None  # type: ignore[arg-type, return-value]
    return SuiteSummary(
        n_sets=len(sets), n_sets_scored=len(scored),
        mean_auc=float(np.mean(aucs)) if aucs else None, min_auc=min(aucs) if aucs else None,
        min_auc_set=low.name if low else None,
        worst_real_acc=worst[0] if worst else None, worst_real_set=worst[1] if worst else None,
        worst_real_source=worst[2] if worst else None,
        unscored_sets=[s.name for s in sets if s.name not in scored_names],
    )


def _unscorable_reason(n_real: int, n_fake: int, n_skipped: int) -> str | None:
    skipped = f" ({n_skipped} file(s) skipped)" if n_skipped else ""
    if n_real == 0 and n_fake == 0:
        return f"no usable image{skipped}: AUC undefined"
    if n_fake == 0:
        return f"only real images ({n_real}){skipped}: AUC undefined, add fakes under fake/<kind>/<generator>/"
    if n_real == 0:
        return f"only fake images ({n_fake}){skipped}: AUC undefined, add reals under real/<source>/"
    return None


def _read_suite_set(set_dir: Path) -> list[Record]:
    """Records of one set folder: any layout auto-detection finds; a generic tree with only real/ or only
    fake/ is still read (as generic), so that the set can be reported as one-class rather than unreadable."""
    from ..data.layouts import detect_layout, read_dataset, read_generic
    from ..errors import DatasetError

    try:
        detect_layout(set_dir)
    except DatasetError:
        if any(p.is_dir() and p.name.lower() in ("real", "fake") for p in set_dir.iterdir()):
            return read_generic(set_dir)
        raise
    return read_dataset(set_dir, "auto")


def _evaluate_suite_set(set_dir: Path, model: MFCLIP, threshold: float, policy: CropPolicy, opts: SuiteOptions,
                        train_hashes16: list[str] | None, on_event: EventHook) -> SuiteSetResult:
    from ..data.crops import CropCache, prepare_crops
    from ..data.transforms import PERTURBATIONS
    from ..media import is_media_file
    from ..paths import cache_dir

    name = set_dir.name
    if not any(p.is_file() and is_media_file(p) for p in set_dir.rglob("*")):
        return SuiteSetResult(name, str(set_dir), 0, 0, None, error="not scored: empty set (no image or video file)")
    try:
        records = _read_suite_set(set_dir)
    except MfclipError as exc:  # not a dataset layout: say so, score the other sets
        return SuiteSetResult(name, str(set_dir), 0, 0, None, error=f"not scored: {exc}")
    total = len(records)
    done = [0]

    def crop_done() -> None:
        done[0] += 1
        on_event("crop", {"set": name, "done": done[0], "total": total})

    entries, skipped = prepare_crops(records, policy, CropCache(cache_dir() / "crops", policy),
                                     workers=opts.workers, on_done=crop_done)
    skipped_files = [{"path": s.record.path, "code": s.code, "message": s.message} for s in skipped]
    labels = labels_of(entries)
    n_real, n_fake = int(np.sum(labels == 0)), int(np.sum(labels == 1))
    overlap = count_overlap(entries, train_hashes16) if train_hashes16 else None
    reason = _unscorable_reason(n_real, n_fake, len(skipped))
    if reason is not None:
        return SuiteSetResult(name, str(set_dir), n_real, n_fake, None, error=f"not scored: {reason}",
                              skipped_files=skipped_files, overlap=overlap)

    def score(perturbation: str | None = None) -> np.ndarray:
        progress = [0]

        def on_batch(n: int) -> None:
            progress[0] += n
            on_event("score", {"set": name, "perturbation": perturbation, "done": progress[0],
                               "total": len(entries)})

        return score_entries(model, entries, batch_size=opts.batch_size, workers=opts.workers, device=opts.device,
                             perturbation=crop_pipeline(perturbation, False), on_batch=on_batch)

    scores = score()
    report = report_for_set(name, entries, scores, threshold, bootstrap=opts.bootstrap, seed=opts.seed,
                            n_skipped=len(skipped))
    robust = []
    if opts.robustness:
        for pert in PERTURBATIONS:
            ps = score(pert)
            robust.append(RobustnessRow(name, pert, binary_metrics(ps, labels, threshold, bootstrap=opts.bootstrap,
                                                                   seed=opts.seed)))
    return SuiteSetResult(name, str(set_dir), n_real, n_fake, report,
                          real_sources=real_acc_by_source(entries, scores, threshold), robustness=robust,
                          skipped_files=skipped_files, overlap=overlap, entries=entries, scores=scores)


def run_suite_model(model: MFCLIP, threshold: float, crop_policy: CropPolicy, opts: SuiteOptions, *,
                    on_event: EventHook = no_event, train_hashes16: list[str] | None = None,
                    checkpoint_sha256: str | None = None) -> SuiteResult:
    """Score every set of ``opts.suite`` with an already loaded model at ``threshold``; see :func:`run_suite`.

    ``model`` must already be on ``opts.device``. ``train_hashes16`` (content-hash prefixes of the model's
    training files) adds a per-set overlap count; ``opts.checkpoint`` / ``checkpoint_sha256`` are only recorded.
    """
    opts.check()
    if not math.isfinite(threshold):
        raise MfclipError(f"threshold must be a finite number, got {threshold}")
    sets: list[SuiteSetResult] = []
    for set_dir in suite_set_dirs(opts.suite):
        on_event("set", {"set": set_dir.name})
        res = _evaluate_suite_set(set_dir, model, float(threshold), crop_policy, opts, train_hashes16, on_event)
        on_event("set_done", {"set": set_dir.name, "message": res.error})
        sets.append(res)
    notes = []
    if opts.robustness:
        notes.append("robustness: each perturbation is applied to the face crop (not the full image), "
                     "to reals and fakes alike")
    if train_hashes16 is None:
        notes.append("no training-file hashes given: overlap with the model's training data was not checked")
    settings = {"bootstrap": opts.bootstrap, "seed": opts.seed, "batch_size": opts.batch_size,
                "device": opts.device, "workers": opts.workers, "robustness": opts.robustness,
                "crop_policy": crop_policy.to_dict()}
    return SuiteResult(suite=str(opts.suite), checkpoint=None if opts.checkpoint is None else str(opts.checkpoint),
                       checkpoint_sha256=checkpoint_sha256,
                       threshold=float(threshold), sets=sets, summary=summarize_suite(sets), settings=settings,
                       notes=notes)


def run_suite(opts: SuiteOptions, *, on_event: EventHook = no_event) -> SuiteResult:
    """Every sub-folder of ``opts.suite`` scored as one dataset with ``opts.checkpoint`` and its threshold.

    Each set is cropped with the checkpoint's crop policy, scored, and reported like `mfclip eval --data`
    (rows per generator / kind / family, AUC CI with ``bootstrap`` > 0, robustness rows), plus the real-ACC
    of each real source. A set that cannot be scored (not a dataset, no usable file, one class only) gets
    an ``error`` and is left out of the summary; the other sets are scored.

    Events: "set" ``{"set"}`` as a set starts; "crop" ``{"set", "done", "total"}``; "score" ``{"set",
    "perturbation" (None: unperturbed), "done", "total"}``; "set_done" ``{"set", "message"}`` (why it was not
    scored, or None). Writes nothing: the JSON and plots are the report layer's (``report.eval``).
    """
    from ..model.checkpoint import load_checkpoint
    from ..runtime import resolve_device

    if opts.checkpoint is None:
        raise MfclipError("run_suite needs SuiteOptions.checkpoint (run_suite_model takes a loaded model)")
    opts = replace(opts, device=resolve_device(opts.device))
    suite_set_dirs(opts.suite)  # a wrong folder fails before the model is loaded
    model, meta = load_checkpoint(opts.checkpoint, device=opts.device)
    hashes = (meta.training.file_hashes16 if meta.training is not None else None) or None
    return run_suite_model(model, meta.decision_threshold().value, meta.input_spec().crop, opts, on_event=on_event,
                           train_hashes16=hashes, checkpoint_sha256=meta.sha256)
