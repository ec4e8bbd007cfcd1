"""Text that reaches a report: paths that are not valid UTF-8, UTC times, rounding."""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

# --- paths that are not valid UTF-8 -------------------------------------------------------------


def path_bytes(path: str) -> bytes:
    """The bytes of a path as the OS gave them (Python keeps undecodable bytes as lone surrogates)."""
    try:
        return path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that did not come from surrogateescape
        return path.encode("utf-8", "surrogatepass")


def safe_text(text: str) -> str:
    """``text`` as valid Unicode: bytes that were not UTF-8 become backslash escapes (``\\xff``).

    Used for every path and message in reports and on the terminal; :func:`path_b64` keeps the exact bytes.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return path_bytes(text).decode("utf-8", "backslashreplace")


def path_b64(path: str) -> str | None:
    """Base64 of the path's exact bytes when they are not valid UTF-8 (else None: ``path`` is exact)."""
    try:
        path.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return base64.b64encode(path_bytes(path)).decode("ascii")


def safe_json(obj: Any) -> Any:
    """``obj`` with every string (keys too) made valid Unicode by :func:`safe_text`."""
    if isinstance(obj, str):
        return safe_text(obj)
    if isinstance(obj, Mapping):
        return {safe_text(str(k)): safe_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [safe_json(v) for v in obj]
    return obj


def utc_now() -> datetime:
    """The current time as a timezone-aware UTC datetime (for ``started_at`` / ``finished_at``)."""
    return datetime.now(UTC)


def format_utc(t: datetime) -> str:
    """ISO-8601 UTC with milliseconds and a ``Z`` suffix; naive datetimes are refused (ambiguous)."""
    if t.tzinfo is None:
        raise ValueError("report timestamps must be timezone-aware (use report.utc_now())")
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def round_to(x: float | None, digits: int) -> float | None:
    return None if x is None else round(float(x), digits)


def check_probability(name: str, x: float | None) -> None:
    if x is not None and not (math.isfinite(x) and 0.0 <= x <= 1.0):
        raise ValueError(f"{name} must be a probability in [0, 1], got {x}")


def os_reason(exc: OSError) -> str:
    """The short reason of an OS error ("No space left on device"), for one-line messages."""
    return exc.strerror or str(exc) or type(exc).__name__
