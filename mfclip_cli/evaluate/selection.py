"""Which records are test data: every record, a --split, or a protocol's test sets as the checkpoint was trained."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import MfclipError
from ..model.metadata import CheckpointMeta

if TYPE_CHECKING:

    from ..data.manifest import Record
from .options import EvalOptions


def select_sets(opts: EvalOptions, records: list[Record], meta: CheckpointMeta
                ) -> tuple[dict[str, list[Record]], list[str]]:
    """Test sets by name (see the module docstring), and notes on how they were chosen."""
    from ..data.protocols import make_protocol
    from ..data.splits import assign_splits

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
