"""The overlap guard: evaluated files whose content the checkpoint was trained or validated on."""

from __future__ import annotations

from ..data.crops import CropEntry


def count_overlap(entries: list[CropEntry], train_hashes16: list[str]) -> int:
    """How many entries (distinct files) have a content-hash prefix among the training hashes."""
    known = set(train_hashes16)
    return sum(e.sha256[:16] in known for e in entries)


def overlap_warning(n: int, total: int) -> str:
    return (f"{n} of {total} evaluated file(s) have the same content as files this checkpoint was trained or "
            f"validated on: these metrics are optimistic. Evaluate held-out data (e.g. --split test, or "
            f"--protocol as trained), or pass --strict to make this an error.")
