"""Deterministic train / val / test splits by group key, and overlap checks between sets of files."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import replace

from ..errors import DatasetError
from .manifest import Record


def group_fraction(group: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the group key and the seed."""
    digest = hashlib.sha256(f"{seed}\x00{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_for_group(group: str, seed: int, val: float, test: float) -> str:
    """The split a group falls in: [0, test) test, [test, test + val) val, the rest train."""
    u = group_fraction(group, seed)
    if u < test:
        return "test"
    if u < test + val:
        return "val"
    return "train"


def check_fractions(val: float, test: float) -> None:
    """Raise ValueError unless 0 <= val, test and val + test < 1."""
    if not (0.0 <= val < 1.0 and 0.0 <= test < 1.0 and val + test < 1.0):
        raise ValueError(f"split fractions need 0 <= val, test and val + test < 1; got val={val}, test={test}")


def preset_group_splits(records: Iterable[Record]) -> dict[str, str]:
    """Group -> split for groups with a preset split; DatasetError if one group has two."""
    preset: dict[str, str] = {}
    for r in records:
        if r.split is None:
            continue
        other = preset.setdefault(r.group, r.split)
        if other != r.split:
            raise DatasetError(
                f"group {r.group!r} has files preset to both {other!r} and {r.split!r} "
                f"(e.g. {r.path}); a group must stay in one split"
            )
    return preset


def assign_splits(records: list[Record], val: float = 0.1, test: float = 0.2, seed: int = 0) -> list[Record]:
    """Records with a split each, in the same order.

    A record with a preset split keeps it (and so does the rest of its group); every other group goes to
    test / val / train by the hash of (seed, group), so a group never spans splits and the result does not
    depend on the order or number of the other records.
    """
    check_fractions(val, test)
    preset = preset_group_splits(records)
    cache: dict[str, str] = {}
    out = []
    for r in records:
        split = preset.get(r.group)
        if split is None:
            split = cache.get(r.group)
            if split is None:
                split = cache[r.group] = split_for_group(r.group, seed, val, test)
        out.append(r if r.split == split else replace(r, split=split))
    return out


def check_disjoint(a: Iterable[Record], b: Iterable[Record]) -> list[str]:
    """Sorted paths present in both ``a`` and ``b`` (empty when the sets are disjoint)."""
    return sorted({r.path for r in a} & {r.path for r in b})
