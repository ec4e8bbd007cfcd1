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
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .data.crops import CropEntry, SkippedEntry
from .data.dataset import CropDataset
from .errors import MfclipError
from .metrics import BinaryMetrics, Row, binary_metrics, breakdown, video_level
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
    threshold: dict[str, Any]
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

    def set_report(self, name: str) -> SetReport:
        """The report of the set called ``name``; KeyError listing the set names otherwise."""
        for s in self.sets:
            if s.name == name:
                return s
        raise KeyError(f"no set {name!r}; sets: {', '.join(s.name for s in self.sets)}")

    def to_dict(self) -> dict[str, Any]:
        from . import __version__

        return _jsonable({
            "schema": SCHEMA_ID,
            "tool": {"name": "mfclip", "version": __version__},
            "checkpoint": {"path": self.checkpoint, "sha256": self.checkpoint_sha256},
            "data": {"path": self.data, "manifest_sha256": self.manifest_sha256, "n_files": self.n_files},
            "threshold": self.threshold,
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


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


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


def select_sets(opts: EvalOptions, records: list[Record], meta: dict[str, Any]
                ) -> tuple[dict[str, list[Record]], list[str]]:
    """Test sets by name (see the module docstring), and notes on how they were chosen."""
    from .data.protocols import make_protocol
    from .data.splits import assign_splits

    if opts.split is not None:
        recorded = meta.get("training", {})
        val = float(recorded.get("val_frac", 0.1))
        test = opts.test_frac if opts.test_frac is not None else float(recorded.get("test_frac", 0.2))
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
        trained = meta.get("taxonomy", {}).get("generators")
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
        trained_on = meta.get("training", {}).get("split")
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


def calibrate_threshold(root: str, model: MFCLIP, meta: dict[str, Any], opts: EvalOptions, policy: CropPolicy,
                        device: str, progress: Progress | None) -> tuple[dict[str, Any], dict[str, Any], set[str]]:
    """Choose a threshold on the data at ``root`` and write the calibrated checkpoint.

    Returns (new threshold dict, {path, sha256, n, skipped}, content-hash prefixes of the calibration files).
    """
    from .fsutil import sha256_file
    from .metrics import choose_threshold
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
        value, info = choose_threshold(scores, labels, method, opts.target_fpr)
    except ValueError as exc:
        raise MfclipError(f"--calibrate {root}: {exc}") from None
    threshold = {**_jsonable(info), "value": float(value), "method": method, "data": str(root),
                 "n_real": int(np.sum(labels == 0)), "n_fake": int(np.sum(labels == 1)),
                 "standardize": opts.standardize, "previous": meta.get("threshold")}
    new_meta = {k: v for k, v in meta.items() if k not in ("sha256", "path")}
    new_meta["threshold"] = threshold
    save_checkpoint(out, model, meta=new_meta, half=meta.get("dtype") == "float16")
    written = {"path": str(out), "sha256": sha256_file(out), "n": len(entries), "skipped": len(skipped)}
    return threshold, written, {e.sha256[:16] for e in entries}


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
    from .runtime.torch_backend import crop_policy_from_meta, threshold_from_meta

    _check_options(opts)
    device = resolve_device(opts.device)
    model, meta = load_checkpoint(opts.checkpoint, device=device)
    policy = crop_policy_from_meta(meta)
    if not opts.calibrate:
        threshold_from_meta(meta)  # a checkpoint without a valid threshold fails before any file is cropped
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
        train_hashes = meta.get("training", {}).get("file_hashes16")
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
            recorded = meta.get("threshold") if isinstance(meta.get("threshold"), dict) else {}
            threshold = {**recorded, "value": threshold_from_meta(meta), "source": "checkpoint"}
            threshold.setdefault("method", "unknown")
        else:
            new_thr, calibrated, calib_hashes = calibrate_threshold(opts.calibrate, model, meta, opts, policy,
                                                                    device, bar)
            threshold = {**new_thr, "source": "calibrated"}
            shared = sum(e.sha256[:16] in calib_hashes for e in entries)
            if shared:
                warnings.append(f"{shared} evaluated file(s) are also in the calibration data {opts.calibrate}: "
                                f"the threshold was chosen on test data")
        thr = float(threshold["value"])

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
        checkpoint=str(opts.checkpoint), checkpoint_sha256=meta["sha256"], data=str(opts.data),
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
                  f"{thr['value']:.4f} ({thr.get('method', 'unknown')}, {thr.get('source', 'checkpoint')})",
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
        console.print(f"calibrated checkpoint: {c['path']} (threshold {thr['value']:.4f}, {thr['method']})",
                      highlight=False)
    if result.plots:
        console.print(f"plots: {len(result.plots)} PNG(s) in {Path(result.plots[0]).parent}", highlight=False)
