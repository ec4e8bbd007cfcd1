"""`mfclip eval` on one dataset: :class:`EvalOptions` in, :class:`EvalResult` out (:func:`run_eval`)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ..errors import MfclipError
from ..events import EventHook, no_event
from ..metrics import binary_metrics

if TYPE_CHECKING:

    from ..data.manifest import Record
from .calibration import calibrate_threshold
from .options import EvalOptions, EvalResult, check_options
from .overlap import count_overlap, overlap_warning
from .scoring import RobustnessRow, SetReport, labels_of, report_for_set
from .selection import select_sets
from .tasks import crop_records, score_records


def _unique_by_path(records: list[Record]) -> list[Record]:
    seen: dict[str, Record] = {}
    for r in records:
        seen.setdefault(r.path, r)
    return list(seen.values())


def run_eval(opts: EvalOptions, *, on_event: EventHook = no_event) -> EvalResult:
    """Evaluate ``opts.checkpoint`` on ``opts.data``: metrics per set and row, robustness, calibration.

    Events: "progress" ``{"what", "done", "total"}`` of each task (cropping, scoring a set, a perturbation,
    calibration). Writes nothing but the calibrated checkpoint (``--calibrate``); the JSON and the plots are
    the report layer's (``report.eval.write_eval_files``), from the result (which carries the scores).
    """
    from ..data.layouts import read_dataset
    from ..data.manifest import manifest_sha256
    from ..data.transforms import PERTURBATIONS
    from ..model.checkpoint import load_checkpoint
    from ..runtime import resolve_device

    check_options(opts)
    device = resolve_device(opts.device)
    model, meta = load_checkpoint(opts.checkpoint, device=device)
    policy = meta.input_spec().crop
    if not opts.calibrate:
        meta.decision_threshold()  # a checkpoint without a valid threshold fails before any file is cropped
    records = read_dataset(opts.data, opts.layout)
    sets, notes = select_sets(opts, records, meta)
    evaluated = _unique_by_path([r for recs in sets.values() for r in recs])
    warnings: list[str] = []

    entries, skipped = crop_records(evaluated, policy, opts.workers, on_event, "face crops")
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
                                                                device, on_event)
        threshold = replace(new_thr, source="calibrated")
        shared = sum(e.sha256[:16] in calib_hashes for e in entries)
        if shared:
            warnings.append(f"{shared} evaluated file(s) are also in the calibration data {opts.calibrate}: "
                            f"the threshold was chosen on test data")
    thr = threshold.value

    reports: list[SetReport] = []
    robustness: list[RobustnessRow] = []
    scored = {}
    for name, ents in set_entries.items():
        scores = score_records(model, ents, opts, device, on_event, f"scoring {name}")
        reports.append(report_for_set(name, ents, scores, thr, bootstrap=opts.bootstrap, seed=opts.seed,
                                      n_skipped=n_skipped[name]))
        scored[name] = (ents, scores)
        if opts.robustness:
            labels = labels_of(ents)
            for pert in PERTURBATIONS:
                ps = score_records(model, ents, opts, device, on_event, f"{name} · {pert}", perturbation=pert)
                robustness.append(RobustnessRow(name, pert, binary_metrics(
                    ps, labels, thr, bootstrap=opts.bootstrap, seed=opts.seed)))

    if opts.robustness:
        notes.append("robustness: each perturbation is applied to the face crop (not the full image), "
                     "to reals and fakes alike")
    if opts.standardize:
        notes.append("standardize: every crop was JPEG re-encoded at quality 90 before scoring")
    return EvalResult(
        checkpoint=str(opts.checkpoint), checkpoint_sha256=meta.sha256, data=str(opts.data),
        manifest_sha256=manifest_sha256(evaluated), n_files=len(evaluated), threshold=threshold,
        overlap=overlap, overlap_by_set=overlap_by_set, overlap_warning=overlap_text, sets=reports, robustness=robustness,
        skipped=n_skipped,
        skipped_files=[{"path": s.record.path, "code": s.code, "message": s.message} for s in skipped],
        settings={**opts.to_dict(), "device": device, "crop_policy": policy.to_dict()},
        warnings=warnings, notes=notes, calibrated_checkpoint=calibrated, scored=scored,
    )
