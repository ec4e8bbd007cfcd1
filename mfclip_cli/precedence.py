"""The one precedence rule of settings, written once: what is stored (a preset, a checkpoint, an ONNX manifest)
< a command-line flag that was given. A flag left unset (None) keeps the stored value."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, TypeVar

T = TypeVar("T")


def overlay(stored: T, **flags: Any) -> T:
    """``stored`` (a frozen dataclass) with each field whose flag is not None replaced by the flag's value."""
    given = {k: v for k, v in flags.items() if v is not None}
    return replace(stored, **given) if given else stored  # type: ignore[type-var]
