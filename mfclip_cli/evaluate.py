"""`mfclip eval`: score a dataset with a checkpoint and compute the paper's metrics (SPEC §6).

Pure core first (:func:`score_entries`, :func:`report_for_set`), then the driver :func:`run_eval`, which
picks the test sets, crops them with the checkpoint's own crop policy, guards against evaluating training
files, optionally recalibrates the threshold, and returns an :class:`EvalResult` that both the JSON writer
and the Rich renderer (:func:`render_eval`) read.

Decisions worth knowing:
- Without ``--split`` / ``--protocol`` every record is test data (one set, "all"). ``--split S`` keeps the
  records whose split is S: preset splits (GenFace, CSV) are honoured, other groups are assigned with the
  same hash rule and fractions (val 0.1, test ``--test-frac``, default 0.2) as ``mfclip train``, so
  ``--split test --seed K [--test-frac F]`` reproduces a run's in-domain test split.
- ``--protocol`` evaluates the protocol's test sets. leave-source-out has one run per held-out pair; the
  run the checkpoint was trained on (its ``training.split`` name) is evaluated, else run 1 — other runs'
  test sets contain this checkpoint's training files. cross-generator without ``--test-generators`` holds
  out every generator the checkpoint was not trained on (its ``taxonomy.generators``).
- Robustness perturbations and ``--standardize`` act on the face crop (after cropping, before the model),
  not on the full image, and on reals and fakes alike. With both, a crop is perturbed, then standardized.
- ``--calibrate ROOT`` reads ROOT with layout auto (``--layout`` describes ``--data`` only).

``--suite DIR`` (:func:`run_suite`, or :func:`run_suite_model` for a model already in memory): every visible
sub-folder of DIR is one dataset root, read with layout auto (a generic tree with only ``real/`` or only
``fake/`` is read too, so it can be reported as one-class). Each set is cropped with the checkpoint's crop policy
and scored at the checkpoint's threshold; ``--bootstrap``, ``--robustness`` and ``--plots DIR`` (into
``DIR/<set>/``) apply per set. A set that is empty, unreadable as a dataset, or one-class after skipping broken
files is not scored: its ``error`` says why, and the summary covers the other sets. JSON (schema
``mfclip.eval-suite/1``)::

    {"schema", "tool", "checkpoint": {"path", "sha256"}, "suite": {"path"}, "threshold": float,
     "sets": [{"name", "path", "status": "scored|not_scored", "error": str|null, "n_real", "n_fake",
               "rows": [<as in mfclip.eval/1: all, then per generator / kind / family>], "video",
               "real_sources": [{"source", "n", "real_acc"}], "robustness": [...], "skipped", "skipped_files",
               "overlap": int|null}],
     "summary": {"n_sets", "n_sets_scored", "n_sets_unscored", "unscored_sets": [name],
                 "mean_auc", "min_auc", "min_auc_set",        # over the scored sets' 'all' rows
                 "worst_real_acc", "worst_real_set", "worst_real_source"},  # min over every real source folder
     "notes", "settings", "plots": [path]}

``worst_real_acc`` is the lowest share of one real source's images called real (1 - that source's false-positive
rate): the false-alarm rate a user whose photos look like that source meets. Undefined values are null.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .data.crops import CropEntry, SkippedEntry
from .data.dataset import CropDataset
from .decision import choose_threshold, is_fake
from .errors import MfclipError
from .fsutil import jsonable
from .metrics import BinaryMetrics, Row, binary_metrics, breakdown, video_level
from .model.metadata import CheckpointMeta, ThresholdRecord
from .model.mfclip import MFCLIP

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from .data.manifest import Record
    from .faces.types import CropPolicy

SCHEMA_ID = "mfclip.eval/1"
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
        from .data.transforms import get_perturbation, standardize

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
    calibrated_out: str | None = None
    bootstrap: int = 0
    json_out: str | None = None
    plots: str | None = None
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
    """What one eval produced; ``to_dict`` is the JSON form (schema ``mfclip.eval/1``)."""

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

    def to_dict(self) -> dict[str, Any]:
        from . import __version__

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
def _check_options(opts: EvalOptions) -> None:
    from .data.manifest import SPLITS

    if opts.split is not None and opts.protocol is not None:
        raise MfclipError("pass --split or --protocol, not both")
    if opts.split is not None and opts.split not in SPLITS:
        raise MfclipError(f"unknown --split {opts.split!r}; valid: {', '.join(SPLITS)}")
    if opts.test_generators and opts.protocol != "cross-generator":
        raise MfclipError("--test-generators only applies with --protocol cross-generator")
    if opts.target_fpr is not None and not opts.calibrate:
        raise MfclipError("--target-fpr chooses the threshold of --calibrate VALROOT; pass --calibrate too")
    if opts.target_fpr is not None and not 0.0 <= opts.target_fpr <= 1.0:
        raise MfclipError(f"--target-fpr must be in [0, 1], got {opts.target_fpr}")
    if opts.calibrated_out and not opts.calibrate:
        raise MfclipError("--calibrated-out names the checkpoint --calibrate writes; pass --calibrate too")
    if opts.bootstrap < 0:
        raise MfclipError(f"--bootstrap must be >= 0, got {opts.bootstrap}")
    if opts.batch_size < 1:
        raise MfclipError(f"--batch-size must be >= 1, got {opts.batch_size}")
    if opts.workers < 0:
        raise MfclipError(f"--workers must be >= 0, got {opts.workers}")


def select_sets(opts: EvalOptions, records: list[Record], meta: CheckpointMeta
                ) -> tuple[dict[str, list[Record]], list[str]]:
    """Test sets by name (see the module docstring), and notes on how they were chosen."""
    from .data.protocols import make_protocol
    from .data.splits import assign_splits

    if opts.split is not None:
        recorded = meta.training
        val = float(recorded.val_frac) if recorded is not None and recorded.val_frac is not None else 0.1
        test = opts.test_frac if opts.test_frac is not None else (
            float(recorded.test_frac) if recorded is not None and recorded.test_frac is not None else 0.2)
        assigned = assign_splits(records, val=val, test=test, seed=opts.seed)
        chosen = [r for r in assigned if r.split == opts.split]
        if not chosen:
            raise MfclipError(f"{opts.data} has no {opts.split!r} records (splits by group, seed {opts.seed})")
        preset = sum(r.split is not None for r in records)
        note = (f"--split {opts.split}: {preset} record(s) with a preset split, the rest assigned by group "
                f"(seed {opts.seed}, val {val:g}, test {test:g} as in `mfclip train`)")
        return {f"split:{opts.split}": chosen}, [note]
    if opts.protocol is None:
        return {"all": records}, []
    kw: dict[str, Any] = {"seed": opts.seed}
    notes: list[str] = []
    if opts.protocol == "cross-generator":
        trained = meta.taxonomy.generators if meta.taxonomy is not None else None
        if opts.test_generators:
            kw["test_generators"] = list(opts.test_generators)
        elif trained:
            kw["train_generators"] = list(trained)
            notes.append(f"cross-generator: held out every generator the checkpoint was not trained on "
                         f"(trained on {', '.join(trained)})")
        else:
            raise MfclipError("--protocol cross-generator needs --test-generators (this checkpoint does not "
                              "record the generators it was trained on)")
    elif opts.protocol == "cross-forgery":
        raise MfclipError("eval cannot rebuild cross-forgery (it needs the training kind); evaluate the data "
                          "without --protocol: rows per forgery kind are reported anyway")
    elif opts.protocol == "cross-dataset":
        raise MfclipError("for cross-dataset, evaluate the second dataset directly: "
                          "`mfclip eval CKPT --data ROOT2` (add --split test if it has preset splits)")
    runs = make_protocol(opts.protocol, records, **kw)
    run = runs[0]
    if len(runs) > 1:
        trained_on = meta.training.split if meta.training is not None else None
        run = next((r for r in runs if r.name == trained_on), runs[0])
        notes.append(f"{opts.protocol}: evaluated run '{run.name}' of {len(runs)}"
                     + ("" if run.name == trained_on else " (the checkpoint names no run of this protocol)"))
    return dict(run.tests), notes


# --- cropping, overlap, calibration --------------------------------------------------------------------------
def _crop(records: list[Record], policy: CropPolicy, workers: int, progress: Progress | None, what: str
          ) -> tuple[list[CropEntry], list[SkippedEntry]]:
    from .data.crops import CropCache, prepare_crops
    from .paths import cache_dir

    task = progress.add_task(what, total=len(records)) if progress is not None else None
    on_done = (lambda: progress.advance(task)) if progress is not None and task is not None else None
    try:
        return prepare_crops(records, policy, CropCache(cache_dir() / "crops", policy), workers=workers,
                             on_done=on_done)
    finally:
        if progress is not None and task is not None:
            progress.remove_task(task)


def _score(model: MFCLIP, entries: list[CropEntry], opts: EvalOptions, device: str, progress: Progress | None,
           what: str, perturbation: str | None = None) -> np.ndarray:
    task = progress.add_task(what, total=len(entries)) if progress is not None else None
    on_batch = (lambda n: progress.advance(task, n)) if progress is not None and task is not None else None
    try:
        return score_entries(model, entries, batch_size=opts.batch_size, workers=opts.workers, device=device,
                             perturbation=crop_pipeline(perturbation, opts.standardize), on_batch=on_batch)
    finally:
        if progress is not None and task is not None:
            progress.remove_task(task)


def count_overlap(entries: list[CropEntry], train_hashes16: list[str]) -> int:
    """How many entries (distinct files) have a content-hash prefix among the training hashes."""
    known = set(train_hashes16)
    return sum(e.sha256[:16] in known for e in entries)


def overlap_warning(n: int, total: int) -> str:
    return (f"{n} of {total} evaluated file(s) have the same content as files this checkpoint was trained or "
            f"validated on: these metrics are optimistic. Evaluate held-out data (e.g. --split test, or "
            f"--protocol as trained), or pass --strict to make this an error.")


def default_calibrated_path(checkpoint: str) -> Path:
    """``<dir>/<stem>.calibrated.safetensors`` next to the input checkpoint."""
    p = Path(checkpoint)
    return p.with_name(f"{p.stem}.calibrated.safetensors")


def _calibration_records(root: str) -> list[Record]:
    from .data.layouts import read_dataset

    records = read_dataset(root, "auto")
    if any(r.split is not None for r in records):
        val = [r for r in records if r.split == "val"]
        if not val:
            raise MfclipError(f"--calibrate {root}: the data has preset splits but no 'val' records; "
                              f"point --calibrate at a validation folder")
        return val
    return records


def calibrate_threshold(root: str, model: MFCLIP, meta: CheckpointMeta, opts: EvalOptions, policy: CropPolicy,
                        device: str, progress: Progress | None) -> tuple[ThresholdRecord, dict[str, Any], set[str]]:
    """Choose a threshold on the data at ``root`` and write the calibrated checkpoint.

    Returns (new threshold record, {path, sha256, n, skipped}, content-hash prefixes of the calibration files).
    """
    from .fsutil import sha256_file
    from .model.checkpoint import save_checkpoint

    out = Path(opts.calibrated_out) if opts.calibrated_out else default_calibrated_path(opts.checkpoint)
    if out.resolve() == Path(opts.checkpoint).resolve():
        raise MfclipError(f"--calibrated-out {out} is the input checkpoint; choose another path")
    records = _calibration_records(root)
    entries, skipped = _crop(records, policy, opts.workers, progress, "calibration crops")
    if not entries:
        raise MfclipError(f"--calibrate {root}: no usable file ({len(skipped)} skipped, e.g. "
                          f"{skipped[0].message if skipped else 'none'})")
    scores = _score(model, entries, opts, device, progress, "calibration scores")
    labels = labels_of(entries)
    method = "eer" if opts.target_fpr is None else "target_fpr"
    try:
        _, chosen = choose_threshold(scores, labels, method, opts.target_fpr)
    except ValueError as exc:
        raise MfclipError(f"--calibrate {root}: {exc}") from None
    new_meta = meta.calibrated(replace(chosen, data=str(root), n_real=int(np.sum(labels == 0)),
                                       n_fake=int(np.sum(labels == 1)), standardize=opts.standardize))
    save_checkpoint(out, model, meta=new_meta, half=meta.dtype == "float16")
    written = {"path": str(out), "sha256": sha256_file(out), "n": len(entries), "skipped": len(skipped)}
    return new_meta.decision_threshold(), written, {e.sha256[:16] for e in entries}


# --- plots ---------------------------------------------------------------------------------------------------
def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "set"


def write_set_plots(out_dir: Path, report: SetReport, entries: list[CropEntry], scores: np.ndarray,
                    threshold: float) -> tuple[list[str], list[str]]:
    """ROC, DET (one curve per row) and score histogram PNGs of one set; (paths written, warnings)."""
    from .plots import plot_det, plot_roc, plot_score_histograms

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


# --- driver --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _progress_bar(enabled: bool) -> Iterator[Progress | None]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        yield bar


def _unique_by_path(records: list[Record]) -> list[Record]:
    seen: dict[str, Record] = {}
    for r in records:
        seen.setdefault(r.path, r)
    return list(seen.values())


def run_eval(opts: EvalOptions, progress: bool = False) -> EvalResult:
    """Evaluate ``opts.checkpoint`` on ``opts.data``: metrics per set and row, robustness, calibration, plots."""
    from .data.layouts import read_dataset
    from .data.manifest import manifest_sha256
    from .data.transforms import PERTURBATIONS
    from .fsutil import atomic_write_json
    from .model.checkpoint import load_checkpoint
    from .runtime import resolve_device

    _check_options(opts)
    device = resolve_device(opts.device)
    model, meta = load_checkpoint(opts.checkpoint, device=device)
    policy = meta.input_spec().crop
    if not opts.calibrate:
        meta.decision_threshold()  # a checkpoint without a valid threshold fails before any file is cropped
    records = read_dataset(opts.data, opts.layout)
    sets, notes = select_sets(opts, records, meta)
    evaluated = _unique_by_path([r for recs in sets.values() for r in recs])
    warnings: list[str] = []

    with _progress_bar(progress) as bar:
        entries, skipped = _crop(evaluated, policy, opts.workers, bar, "face crops")
        by_path = {e.record.path: e for e in entries}
        set_entries = {name: [by_path[r.path] for r in recs if r.path in by_path] for name, recs in sets.items()}
        n_skipped = {name: len(recs) - len(set_entries[name]) for name, recs in sets.items()}
        for name, ents in set_entries.items():
            if not ents:
                raise MfclipError(f"set {name!r}: none of its {len(sets[name])} file(s) could be used "
                                  f"(e.g. {skipped[0].message if skipped else 'no files'})")

        # overlap guard: content hashes, so renamed or copied training files are caught as well
        train_hashes = meta.training.file_hashes16 if meta.training is not None else None
        overlap: int | None = None
        overlap_by_set: dict[str, int] | None = None
        overlap_text: str | None = None
        if train_hashes:
            overlap = count_overlap(entries, train_hashes)
            overlap_by_set = {name: count_overlap(ents, train_hashes) for name, ents in set_entries.items()}
            if overlap:
                overlap_text = overlap_warning(overlap, len(entries))
                if opts.strict:
                    raise MfclipError(f"--strict: {overlap_text}")
        else:
            notes.append("the checkpoint records no training-file hashes: overlap with its training data "
                         "was not checked")

        calibrated = None
        if not opts.calibrate:  # calibrating chooses a new one: an old checkpoint without a threshold is fine
            threshold = replace(meta.decision_threshold(), source="checkpoint")
        else:
            new_thr, calibrated, calib_hashes = calibrate_threshold(opts.calibrate, model, meta, opts, policy,
                                                                    device, bar)
            threshold = replace(new_thr, source="calibrated")
            shared = sum(e.sha256[:16] in calib_hashes for e in entries)
            if shared:
                warnings.append(f"{shared} evaluated file(s) are also in the calibration data {opts.calibrate}: "
                                f"the threshold was chosen on test data")
        thr = threshold.value

        reports: list[SetReport] = []
        robustness: list[RobustnessRow] = []
        plots: list[str] = []
        for name, ents in set_entries.items():
            scores = _score(model, ents, opts, device, bar, f"scoring {name}")
            rep = report_for_set(name, ents, scores, thr, bootstrap=opts.bootstrap, seed=opts.seed,
                                 n_skipped=n_skipped[name])
            reports.append(rep)
            if opts.plots:
                paths, plot_warnings = write_set_plots(Path(opts.plots), rep, ents, scores, thr)
                plots += paths
                warnings += plot_warnings
            if opts.robustness:
                labels = labels_of(ents)
                for pert in PERTURBATIONS:
                    ps = _score(model, ents, opts, device, bar, f"{name} · {pert}", perturbation=pert)
                    robustness.append(RobustnessRow(name, pert, binary_metrics(
                        ps, labels, thr, bootstrap=opts.bootstrap, seed=opts.seed)))

    if opts.robustness:
        notes.append("robustness: each perturbation is applied to the face crop (not the full image), "
                     "to reals and fakes alike")
    if opts.standardize:
        notes.append("standardize: every crop was JPEG re-encoded at quality 90 before scoring")
    result = EvalResult(
        checkpoint=str(opts.checkpoint), checkpoint_sha256=meta.sha256, data=str(opts.data),
        manifest_sha256=manifest_sha256(evaluated), n_files=len(evaluated), threshold=threshold,
        overlap=overlap, overlap_by_set=overlap_by_set, overlap_warning=overlap_text, sets=reports, robustness=robustness,
        skipped=n_skipped,
        skipped_files=[{"path": s.record.path, "code": s.code, "message": s.message} for s in skipped],
        settings={**opts.to_dict(), "device": device, "crop_policy": policy.to_dict()},
        warnings=warnings, notes=notes, calibrated_checkpoint=calibrated, plots=plots,
    )
    if opts.json_out:
        atomic_write_json(opts.json_out, result.to_dict())
    return result


# --- suite: every sub-folder of a folder is one dataset ------------------------------------------------------
SUITE_SCHEMA_ID = "mfclip.eval-suite/1"


@dataclass(frozen=True)
class SuiteEvent:
    """Progress of :func:`run_suite`: ``stage`` is 'set' (a set starts), 'crop' or 'score' (``done`` of
    ``total`` items of ``set_name``), or 'set_done' (``message`` says why when the set was not scored)."""

    stage: str
    set_name: str
    done: int = 0
    total: int = 0
    message: str | None = None


SuiteHook = Callable[[SuiteEvent], None]


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
    # the scored crops and their P(fake), for plots and further analysis (not in to_dict)
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

    def to_dict(self) -> dict[str, Any]:
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
    """What a suite eval produced; ``to_dict`` is the JSON form (schema ``mfclip.eval-suite/1``)."""

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

    def to_dict(self) -> dict[str, Any]:
        from . import __version__

        return jsonable({
            "schema": SUITE_SCHEMA_ID,
            "tool": {"name": "mfclip", "version": __version__},
            "checkpoint": {"path": self.checkpoint, "sha256": self.checkpoint_sha256},
            "suite": {"path": self.suite},
            "threshold": self.threshold,
            "sets": [s.to_dict() for s in self.sets],
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
    from .data.layouts import detect_layout, read_dataset, read_generic
    from .errors import DatasetError

    try:
        detect_layout(set_dir)
    except DatasetError:
        if any(p.is_dir() and p.name.lower() in ("real", "fake") for p in set_dir.iterdir()):
            return read_generic(set_dir)
        raise
    return read_dataset(set_dir, "auto")


def _evaluate_suite_set(set_dir: Path, model: MFCLIP, threshold: float, policy: CropPolicy, *, bootstrap: int,
                        seed: int, batch_size: int, device: str, workers: int, robustness: bool,
                        train_hashes16: list[str] | None, emit: SuiteHook) -> SuiteSetResult:
    from .data.crops import CropCache, prepare_crops
    from .data.transforms import PERTURBATIONS
    from .media import is_media_file
    from .paths import cache_dir

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
        emit(SuiteEvent("crop", name, done[0], total))

    entries, skipped = prepare_crops(records, policy, CropCache(cache_dir() / "crops", policy), workers=workers,
                                     on_done=crop_done)
    skipped_files = [{"path": s.record.path, "code": s.code, "message": s.message} for s in skipped]
    labels = labels_of(entries)
    n_real, n_fake = int(np.sum(labels == 0)), int(np.sum(labels == 1))
    overlap = count_overlap(entries, train_hashes16) if train_hashes16 else None
    reason = _unscorable_reason(n_real, n_fake, len(skipped))
    if reason is not None:
        return SuiteSetResult(name, str(set_dir), n_real, n_fake, None, error=f"not scored: {reason}",
                              skipped_files=skipped_files, overlap=overlap)

    def score(what: str, perturbation: str | None = None) -> np.ndarray:
        progress = [0]

        def on_batch(n: int) -> None:
            progress[0] += n
            emit(SuiteEvent(what, name, progress[0], len(entries)))

        return score_entries(model, entries, batch_size=batch_size, workers=workers, device=device,
                             perturbation=crop_pipeline(perturbation, False), on_batch=on_batch)

    scores = score("score")
    report = report_for_set(name, entries, scores, threshold, bootstrap=bootstrap, seed=seed,
                            n_skipped=len(skipped))
    robust = []
    if robustness:
        for pert in PERTURBATIONS:
            ps = score(f"score:{pert}", pert)
            robust.append(RobustnessRow(name, pert, binary_metrics(ps, labels, threshold, bootstrap=bootstrap,
                                                                   seed=seed)))
    return SuiteSetResult(name, str(set_dir), n_real, n_fake, report,
                          real_sources=real_acc_by_source(entries, scores, threshold), robustness=robust,
                          skipped_files=skipped_files, overlap=overlap, entries=entries, scores=scores)


def run_suite_model(model: MFCLIP, threshold: float, crop_policy: CropPolicy, suite_dir: str | Path, *,
                    bootstrap: int = 0, seed: int = 0, batch_size: int = 32, device: str = "cpu", workers: int = 2,
                    robustness: bool = False, on_event: SuiteHook | None = None,
                    train_hashes16: list[str] | None = None, checkpoint: str | None = None,
                    checkpoint_sha256: str | None = None) -> SuiteResult:
    """Score every set of ``suite_dir`` with an already loaded model at ``threshold``; see :func:`run_suite`.

    ``model`` must already be on ``device``. ``train_hashes16`` (content-hash prefixes of the model's
    training files) adds a per-set overlap count; ``checkpoint`` / ``checkpoint_sha256`` are only recorded.
    """
    if bootstrap < 0:
        raise MfclipError(f"--bootstrap must be >= 0, got {bootstrap}")
    if batch_size < 1:
        raise MfclipError(f"--batch-size must be >= 1, got {batch_size}")
    if workers < 0:
        raise MfclipError(f"--workers must be >= 0, got {workers}")
    if not math.isfinite(threshold):
        raise MfclipError(f"threshold must be a finite number, got {threshold}")
    emit = on_event or (lambda _event: None)
    sets: list[SuiteSetResult] = []
    for set_dir in suite_set_dirs(suite_dir):
        emit(SuiteEvent("set", set_dir.name))
        res = _evaluate_suite_set(set_dir, model, float(threshold), crop_policy, bootstrap=bootstrap, seed=seed,
                                  batch_size=batch_size, device=device, workers=workers, robustness=robustness,
                                  train_hashes16=train_hashes16, emit=emit)
        emit(SuiteEvent("set_done", set_dir.name, message=res.error))
        sets.append(res)
    notes = []
    if robustness:
        notes.append("robustness: each perturbation is applied to the face crop (not the full image), "
                     "to reals and fakes alike")
    if train_hashes16 is None:
        notes.append("no training-file hashes given: overlap with the model's training data was not checked")
    settings = {"bootstrap": bootstrap, "seed": seed, "batch_size": batch_size, "device": device,
                "workers": workers, "robustness": robustness, "crop_policy": crop_policy.to_dict()}
    return SuiteResult(suite=str(suite_dir), checkpoint=checkpoint, checkpoint_sha256=checkpoint_sha256,
                       threshold=float(threshold), sets=sets, summary=summarize_suite(sets), settings=settings,
                       notes=notes)


def run_suite(checkpoint: str | Path, suite_dir: str | Path, *, bootstrap: int = 0, seed: int = 0,
              batch_size: int = 32, device: str = "cpu", workers: int = 2, robustness: bool = False,
              on_event: SuiteHook | None = None) -> SuiteResult:
    """Every sub-folder of ``suite_dir`` scored as one dataset with ``checkpoint`` and its threshold.

    Each set is cropped with the checkpoint's crop policy, scored, and reported like `mfclip eval --data`
    (rows per generator / kind / family, AUC CI with ``bootstrap`` > 0, robustness rows), plus the real-ACC
    of each real source. A set that cannot be scored (not a dataset, no usable file, one class only) gets
    an ``error`` and is left out of the summary; the other sets are scored. ``device`` may be 'auto'.
    """
    from .model.checkpoint import load_checkpoint
    from .runtime import resolve_device

    device = resolve_device(device)
    suite_set_dirs(suite_dir)  # a wrong folder fails before the model is loaded
    model, meta = load_checkpoint(checkpoint, device=device)
    hashes = (meta.training.file_hashes16 if meta.training is not None else None) or None
    return run_suite_model(model, meta.decision_threshold().value, meta.input_spec().crop, suite_dir,
                           bootstrap=bootstrap, seed=seed, batch_size=batch_size, device=device, workers=workers,
                           robustness=robustness, on_event=on_event, train_hashes16=hashes,
                           checkpoint=str(checkpoint), checkpoint_sha256=meta.sha256)


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


# --- rendering -----------------------------------------------------------------------------------------------
def _f(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _ci(m: BinaryMetrics) -> str:
    return "" if m.auc_ci is None else f"{m.auc_ci[0]:.2f}–{m.auc_ci[1]:.2f}"


def _metric_table(title: str, first: str, with_ci: bool):
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0, 0, 1))
    # the row name is the only column that may wrap on a narrow terminal; numbers are never cut
    table.add_column(first, overflow="fold", min_width=12)
    cols = ["n\nreal", "n\nfake", "AUC", *(["AUC\n95% CI"] if with_ci else []), "AP", "EER", "ACC", "real\nACC",
            "fake\nACC"]
    for col in cols:
        table.add_column(col, justify="right", no_wrap=True, min_width=4)
    return table


def _metric_cells(m: BinaryMetrics, with_ci: bool) -> list[str]:
    return [str(m.n_real), str(m.n_fake), _f(m.auc), *([_ci(m)] if with_ci else []), _f(m.ap), _f(m.eer),
            _f(m.acc), _f(m.real_acc), _f(m.fake_acc)]


def render_eval(result: EvalResult, console: Console) -> None:
    """Rich tables: one per set (rows by generator / kind / family), robustness, and any warnings."""
    if result.overlap_warning:
        console.print(f"[bold red]WARNING: {result.overlap_warning}[/]", highlight=False)
    for w in result.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    thr = result.threshold
    console.print(f"checkpoint {result.checkpoint} (sha256 {result.checkpoint_sha256[:12]}) · threshold "
                  f"{thr.value:.4f} ({thr.method}, {thr.source or 'checkpoint'})",
                  highlight=False)
    for rep in result.sets:
        items = [(r.name if r.group_by == "all" else f"{r.name} [dim]{r.group_by}[/]", r.metrics) for r in rep.rows]
        if rep.video is not None:
            items.append(("all [dim]video level[/]", rep.video))
        with_ci = any(m.auc_ci is not None for _, m in items)
        title = f"{rep.name}  ({rep.n_skipped} file(s) skipped)" if rep.n_skipped else rep.name
        table = _metric_table(title, "row", with_ci)
        for label, m in items:
            table.add_row(label, *_metric_cells(m, with_ci), style="bold" if label == "all" else None)
        console.print(table)
    if result.robustness:
        with_ci = False  # the CIs are in the JSON; here the width goes to ΔAUC
        table = _metric_table("robustness: 'all' rows with the face crop degraded (reals and fakes alike)",
                              "perturbation", with_ci)
        table.add_column("ΔAUC", justify="right", no_wrap=True, min_width=6)
        clean = {rep.name: rep.row("all").metrics.auc for rep in result.sets}
        for r in result.robustness:
            m, base = r.metrics, clean.get(r.set_name)
            delta = "—" if m.auc is None or base is None else f"{m.auc - base:+.3f}"
            label = r.perturbation if len(result.sets) == 1 else f"{r.set_name} · {r.perturbation}"
            table.add_row(label, *_metric_cells(m, with_ci), delta)
        console.print(table)
    if result.overlap:
        console.print(f"[bold red]overlap: {result.overlap} evaluated file(s) were used to train this checkpoint[/]")
    for note in result.notes:
        console.print(f"[dim]note: {note}[/]", highlight=False)
    if result.calibrated_checkpoint:
        c = result.calibrated_checkpoint
        console.print(f"calibrated checkpoint: {c['path']} (threshold {thr.value:.4f}, {thr.method})",
                      highlight=False)
    if result.plots:
        console.print(f"plots: {len(result.plots)} PNG(s) in {Path(result.plots[0]).parent}", highlight=False)


def render_suite(result: SuiteResult, console: Console, plots: list[str] | None = None) -> None:
    """One Rich table: per set its 'all' row, then a row per generator and per real source (real-ACC);
    why a set was not scored; robustness rows if any; the summary."""
    thr = result.threshold
    where = f"checkpoint {result.checkpoint} (sha256 {result.checkpoint_sha256[:12]})" if result.checkpoint_sha256 \
        else "model"
    console.print(f"{where} · threshold {thr:.4f} · suite {result.suite}", highlight=False)
    with_ci = any(r.metrics.auc_ci is not None for s in result.sets for r in s.rows)
    table = _metric_table(f"suite: {len(result.sets)} set(s)", "set / row", with_ci)
    n_cols = len(table.columns) - 1
    for i, s in enumerate(result.sets):
        if i:
            table.add_section()
        if s.report is None:  # why is said under the table, where a long message has room
            table.add_row(f"[bold]{s.name}[/] [yellow]not scored[/]", str(s.n_real), str(s.n_fake),
                          *["—"] * (n_cols - 2))
            continue
        skipped = f" [dim]({s.report.n_skipped} skipped)[/]" if s.report.n_skipped else ""
        table.add_row(f"[bold]{s.name}[/]{skipped}", *_metric_cells(s.report.row("all").metrics, with_ci),
                      style="bold")
        for r in s.report.rows:
            if r.group_by == "generator":
                table.add_row(f"  {r.name}", *_metric_cells(r.metrics, with_ci))
        for src in s.real_sources:
            cells = [str(src.n), "", *["—"] * (n_cols - 4), _f(src.real_acc), "—"]
            table.add_row(f"  real: {src.source}", *cells)
    console.print(table)
    for s in result.sets:
        if s.error:
            console.print(f"[yellow]{s.name}:[/] {s.error}", highlight=False)
    robust = [r for s in result.sets for r in s.robustness]
    if robust:
        rtable = _metric_table("robustness: 'all' rows with the face crop degraded (reals and fakes alike)",
                               "set · perturbation", False)
        rtable.add_column("ΔAUC", justify="right", no_wrap=True, min_width=6)
        clean = {s.name: s.auc for s in result.sets}
        for r in robust:
            base, m = clean.get(r.set_name), r.metrics
            delta = "—" if m.auc is None or base is None else f"{m.auc - base:+.3f}"
            rtable.add_row(f"{r.set_name} · {r.perturbation}", *_metric_cells(m, False), delta)
        console.print(rtable)
    sm = result.summary
    console.print(
        f"[bold]summary[/] over {sm.n_sets_scored} of {sm.n_sets} set(s): mean AUC {_f(sm.mean_auc)} · "
        f"min AUC {_f(sm.min_auc)}" + (f" ({sm.min_auc_set})" if sm.min_auc_set else "")
        + f" · worst real-ACC {_f(sm.worst_real_acc)}"
        + (f" ({sm.worst_real_set}/{sm.worst_real_source})" if sm.worst_real_source else ""), highlight=False)
    if sm.unscored_sets:
        console.print(f"[yellow]{sm.n_sets_unscored} set(s) not scored:[/] {', '.join(sm.unscored_sets)} "
                      f"(left out of the summary)", highlight=False)
    overlapping = {s.name: s.overlap for s in result.sets if s.overlap}
    if overlapping:
        console.print("[bold red]overlap: files this checkpoint was trained on are in "
                      + ", ".join(f"{k} ({v})" for k, v in overlapping.items()) + ": these metrics are optimistic[/]")
    for note in result.notes:
        console.print(f"[dim]note: {note}[/]", highlight=False)
    if plots:
        console.print(f"plots: {len(plots)} PNG(s) under {Path(plots[0]).parent.parent}", highlight=False)
