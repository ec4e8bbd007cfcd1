"""Evaluation protocols (SPEC §6): which records train, validate and test, as one :class:`ProtocolSplit`.

Common rules:
- Splits are by group key (``splits.assign_splits``); a group never appears in two of train / val / tests.
- Every test set of a split shares the same real test images, so rows compare like with like.
- Preset splits (GenFace trees, CSV ``split`` column) are honoured: a preset-test record never trains, and a
  held-out record preset to train/val is not tested (so GenFace's official test split is what is tested).
- Train, val and every test set must contain both classes, else DatasetError says which set is short.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import DatasetError
from .manifest import Record, write_manifest_csv
from .splits import assign_splits, check_disjoint, check_fractions
from .taxonomy import KINDS, normalise_generator

PROTOCOLS: tuple[str, ...] = ("in-domain", "cross-generator", "cross-forgery", "cross-dataset", "leave-source-out")


@dataclass(frozen=True)
class ProtocolSplit:
    """Train / val records and named test sets of one protocol run (records carry their split)."""

    name: str
    train: list[Record]
    val: list[Record]
    tests: dict[str, list[Record]]

    def sets(self) -> dict[str, list[Record]]:
        """All sets by name: 'train', 'val', then the test sets."""
        return {"train": self.train, "val": self.val, **self.tests}

    def summary(self) -> dict[str, dict[str, int]]:
        """Real / fake counts per set."""
        return {
            name: {"real": sum(r.y == 0 for r in recs), "fake": sum(r.y == 1 for r in recs)}
            for name, recs in self.sets().items()
        }


def _with_split(records: list[Record], split: str) -> list[Record]:
    return [r if r.split == split else replace(r, split=split) for r in records]


def _checked(split: ProtocolSplit, check_groups: bool = True) -> ProtocolSplit:
    """The split itself, after checking that every set has both classes and is group-disjoint."""
    if not split.tests:
        raise DatasetError(f"{split.name}: no test set (nothing is held out)")
    for set_name, recs in split.sets().items():
        reals = sum(r.y == 0 for r in recs)
        fakes = len(recs) - reals
        if reals == 0 or fakes == 0:
            raise DatasetError(
                f"{split.name}: set {set_name!r} has {reals} real and {fakes} fake file(s); every set needs both "
                f"classes. Add data, or change the split fractions / held-out names."
            )
    if not check_groups:
        return split
    fit_groups = {r.group for r in split.train} | {r.group for r in split.val}
    if {r.group for r in split.train} & {r.group for r in split.val}:  # pragma: no cover - internal invariant
        raise AssertionError("a group spans train and val")
    for set_name, recs in split.tests.items():
        if fit_groups & {r.group for r in recs}:  # pragma: no cover - internal invariant
            raise AssertionError(f"a group spans train/val and test set {set_name!r}")
    return split


def _held_out_protocol(
    name: str,
    records: list[Record],
    trains_fake: Callable[[Record], bool],
    test_set_of: Callable[[Record], str | None],
    seed: int,
    val: float,
    test: float,
) -> ProtocolSplit:
    """Reals split train/val/test by group; fakes chosen by ``trains_fake`` go to train/val, the others to the
    test set named by ``test_set_of`` (None: unused), each test set paired with the real test split."""
    check_fractions(val, test)
    assigned = assign_splits(records, val, test, seed)
    train: list[Record] = []
    val_set: list[Record] = []
    test_reals: list[Record] = []
    held: dict[str, list[Record]] = defaultdict(list)
    spare: list[Record] = []  # training fakes whose group hashed to test: train with them if that is safe
    for orig, r in zip(records, assigned):
        if r.y == 0:
            {"train": train, "val": val_set, "test": test_reals}[r.split or "train"].append(r)
        elif trains_fake(r):
            if r.split == "train":
                train.append(r)
            elif r.split == "val":
                val_set.append(r)
            elif orig.split is None:
                spare.append(r)
        else:
            key = test_set_of(r)
            if key is not None and orig.split in (None, "test"):
                held[key].append(r)
    test_groups = {r.group for r in test_reals} | {r.group for recs in held.values() for r in recs}
    train += _with_split([r for r in spare if r.group not in test_groups], "train")
    fit_groups = {r.group for r in train} | {r.group for r in val_set}
    tests = {
        key: sorted(test_reals + _with_split([r for r in held[key] if r.group not in fit_groups], "test"),
                    key=lambda r: r.path)
        for key in sorted(held)
    }
    by_path = sorted(train, key=lambda r: r.path), sorted(val_set, key=lambda r: r.path)
    return _checked(ProtocolSplit(name, by_path[0], by_path[1], tests))


def in_domain(records: list[Record], seed: int = 0, val: float = 0.1, test: float = 0.2) -> ProtocolSplit:
    """One pool split by group into train / val / test (test set 'in-domain')."""
    assigned = assign_splits(records, val, test, seed)
    parts: dict[str, list[Record]] = {"train": [], "val": [], "test": []}
    for r in assigned:
        parts[r.split or "train"].append(r)
    return _checked(ProtocolSplit("in-domain", parts["train"], parts["val"], {"in-domain": parts["test"]}))


def generator_folders(records: list[Record]) -> dict[str, list[str]]:
    """Generator display name -> the folder (source) names its fakes come from, both sorted."""
    folders: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r.y == 1:
            folders[r.generator].add(r.source)
    return {g: sorted(f) for g, f in sorted(folders.items())}


def _describe_generators(records: list[Record]) -> str:
    return "; ".join(f"{g} (folder {', '.join(f)})" for g, f in generator_folders(records).items()) or "none"


def resolve_generators(names: list[str], records: list[Record]) -> list[str]:
    """Display names of the generators ``names`` refers to (by display name or folder name, normalised).

    DatasetError listing the available generators if a name matches none.
    """
    available = {
        g: {normalise_generator(g), *map(normalise_generator, folders)}
        for g, folders in generator_folders(records).items()
    }
    out: list[str] = []
    unknown: list[str] = []
    for name in names:
        key = normalise_generator(name)
        hits = [g for g, keys in available.items() if key in keys]
        if not hits:
            unknown.append(name)
        for g in hits:
            if g not in out:
                out.append(g)
    if unknown:
        raise DatasetError(
            f"unknown generator name(s) {', '.join(map(repr, unknown))}; a generator is named by its display "
            f"name or its folder. Available generators: {_describe_generators(records)}"
        )
    return out


def cross_generator(
    records: list[Record],
    test_generators: list[str] | None = None,
    train_generators: list[str] | None = None,
    seed: int = 0,
    val: float = 0.1,
    test: float = 0.2,
) -> ProtocolSplit:
    """Train on some generators (+ reals), test each other generator as 'generator:<name>'.

    Give the training generators, the held-out ones, or both (generators in neither list are unused).
    """
    available = set(generator_folders(records))
    if not test_generators and not train_generators:
        raise DatasetError(
            "cross-generator needs the training generators or the held-out ones. "
            f"Available generators: {_describe_generators(records)}"
        )
    held = set(resolve_generators(test_generators or [], records))
    trained = set(resolve_generators(train_generators or [], records))
    if not train_generators:
        trained = set(available) - held
    if not test_generators:
        held = set(available) - trained
    both = sorted(held & trained)
    if both:
        raise DatasetError(f"generator(s) {', '.join(both)} are both trained on and held out")
    if not trained:
        raise DatasetError("cross-generator: no generator left to train on")
    if not held:
        raise DatasetError("cross-generator: no generator left to test on")
    return _held_out_protocol(
        "cross-generator", records,
        trains_fake=lambda r: r.generator in trained,
        test_set_of=lambda r: f"generator:{r.generator}" if r.generator in held else None,
        seed=seed, val=val, test=test,
    )


def cross_forgery(
    records: list[Record], train_kind: str, seed: int = 0, val: float = 0.1, test: float = 0.2
) -> ProtocolSplit:
    """Train on one forgery kind (+ reals), test each other kind present as 'kind:<kind>'."""
    if train_kind not in KINDS:
        raise DatasetError(f"unknown forgery kind {train_kind!r}; valid: {', '.join(KINDS)}")
    present = sorted({r.kind for r in records if r.y == 1})
    if train_kind not in present:
        raise DatasetError(f"no fakes of kind {train_kind!r} in the data; present kinds: {', '.join(present) or 'none'}")
    if len(present) < 2:
        raise DatasetError(f"cross-forgery needs a second forgery kind to test; the data has only {train_kind!r}")
    return _held_out_protocol(
        "cross-forgery", records,
        trains_fake=lambda r: r.kind == train_kind,
        test_set_of=lambda r: f"kind:{r.kind}",
        seed=seed, val=val, test=test,
    )


def cross_dataset(
    train_records: list[Record],
    test_records: list[Record],
    seed: int = 0,
    val: float = 0.1,
    test_name: str = "cross-dataset",
) -> ProtocolSplit:
    """Train / validate on dataset A (split by group), test on dataset B (its preset test split if any)."""
    shared = check_disjoint(train_records, test_records)
    if shared:
        raise DatasetError(
            f"cross-dataset: {len(shared)} file(s) are in both datasets (e.g. {shared[0]}); use two distinct datasets"
        )
    assigned = assign_splits(train_records, val, 0.0, seed)
    train = [r for r in assigned if r.split == "train"]
    val_set = [r for r in assigned if r.split == "val"]
    tests = {test_name: _with_split([r for r in test_records if r.split in (None, "test")], "test")}
    # Group keys of two datasets are separate namespaces (paths relative to each root): only paths must differ.
    return _checked(ProtocolSplit("cross-dataset", train, val_set, tests), check_groups=False)


def leave_source_out(records: list[Record], seed: int = 0, val: float = 0.1) -> list[ProtocolSplit]:
    """Runs that each hold out one fake generator and one real source, paired in a fixed rotation.

    Run i holds out generator G[i mod #G] and real source R[i mod #R] (both sorted by name), for
    max(#G, #R) runs, so every generator and every real source is held out at least once. Each run trains
    and validates (split by group) on everything else and tests only on the held-out pair,
    'heldout:<generator>+<source>'. Preset splits are ignored: whole sources are held out instead.
    """
    records = [replace(r, split=None) if r.split is not None else r for r in records]
    generators = sorted({r.generator for r in records if r.y == 1})
    sources = sorted({r.source for r in records if r.y == 0})
    if len(generators) < 2 or len(sources) < 2:
        raise DatasetError(
            "leave-source-out needs at least 2 fake generators and 2 real sources to hold one of each out; "
            f"found generators: {', '.join(generators) or 'none'}; real sources: {', '.join(sources) or 'none'}"
        )
    n = max(len(generators), len(sources))
    runs = []
    for i in range(n):
        gen, src = generators[i % len(generators)], sources[i % len(sources)]

        def held(r: Record, gen: str = gen, src: str = src) -> bool:
            return r.generator == gen if r.y == 1 else r.source == src

        test_set = _with_split([r for r in records if held(r)], "test")
        test_groups = {r.group for r in test_set}
        rest = [r for r in records if not held(r) and r.group not in test_groups]
        assigned = assign_splits(rest, val, 0.0, seed)
        runs.append(_checked(ProtocolSplit(
            f"leave-source-out {i + 1}/{n}",
            [r for r in assigned if r.split == "train"],
            [r for r in assigned if r.split == "val"],
            {f"heldout:{gen}+{src}": test_set},
        )))
    return runs


def make_protocol(name: str, records: list[Record], **opts) -> list[ProtocolSplit]:
    """The protocol ``name`` applied to ``records`` as a list of runs (one, except leave-source-out).

    Options are those of the protocol's function (``cross-dataset`` takes ``test_records``).
    """
    if name == "in-domain":
        return [in_domain(records, **opts)]
    if name == "cross-generator":
        return [cross_generator(records, **opts)]
    if name == "cross-forgery":
        if "train_kind" not in opts:
            raise DatasetError(f"cross-forgery needs train_kind (one of {', '.join(KINDS)})")
        return [cross_forgery(records, **opts)]
    if name == "cross-dataset":
        if "test_records" not in opts:
            raise DatasetError("cross-dataset needs test_records (the second dataset)")
        return [cross_dataset(records, **opts)]
    if name == "leave-source-out":
        return leave_source_out(records, **opts)
    raise DatasetError(f"unknown protocol {name!r}; valid: {', '.join(PROTOCOLS)}")


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "set"


def write_split_files(split: ProtocolSplit, run_dir: str | os.PathLike) -> dict[str, Path]:
    """Write train.csv, val.csv and test_<name>.csv manifests into ``run_dir``; set name -> path."""
    run_dir = Path(run_dir)
    out: dict[str, Path] = {}
    used: set[str] = set()
    for set_name, recs in split.sets().items():
        stem = set_name if set_name in ("train", "val") else f"test_{_file_stem(set_name)}"
        candidate, k = stem, 2
        while candidate in used:
            candidate, k = f"{stem}_{k}", k + 1
        used.add(candidate)
        path = run_dir / f"{candidate}.csv"
        write_manifest_csv(recs, path)
        out[set_name] = path
    return out
