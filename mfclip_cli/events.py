"""The one progress hook of every verb: ``on_event(event, payload)``.

Each ``run_X`` takes ``on_event`` (default :func:`no_event`) and calls it with an event name and a dict; the verb's
docstring lists its events. The CLI turns them into progress bars and streamed output; the core never renders.
An exception raised by a listener propagates out of the verb (e.g. to refuse a scan's inputs before it starts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

EventHook = Callable[[str, dict[str, Any]], None]


def no_event(event: str, payload: dict[str, Any]) -> None:
    """The default hook: hears nothing."""
