"""Exit codes of `mfclip scan`, defined once."""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    """Exit status of ``mfclip scan`` (the other commands use OK and FATAL only).

    Precedence when several apply: INTERRUPTED/TERMINATED > REPORT_FAILED > FLAGGED > READ_ERRORS > OK.
    """

    OK = 0  # nothing flagged
    FLAGGED = 1  # at least one item's verdict is fake
    FATAL = 2  # usage or fatal error before scanning: bad option, bad weights, unusable report path
    READ_ERRORS = 3  # nothing flagged, but some inputs could not be read
    REPORT_FAILED = 4  # the scan finished but a report could not be written (the others were)
    INTERRUPTED = 130  # stopped by SIGINT (Ctrl-C), as shells report it: 128 + 2; partial report written
    TERMINATED = 143  # stopped by SIGTERM (job schedulers): 128 + 15; partial report written


def interrupted_exit_code(signum: int | None) -> ExitCode:
    """The exit code of a scan stopped by signal ``signum`` (None: a KeyboardInterrupt, i.e. SIGINT)."""
    return ExitCode.TERMINATED if signum == 15 else ExitCode.INTERRUPTED


def exit_code_for(summary: Mapping[str, Any], *, interrupted_by: int | None | bool = False,
                  report_failed: bool = False) -> ExitCode:
    """The scan's exit code: INTERRUPTED/TERMINATED when ``interrupted_by`` (a signal number, or True for
    SIGINT), else REPORT_FAILED, else FLAGGED if any fake, else READ_ERRORS if any error, else OK."""
    if interrupted_by is not False:
        return interrupted_exit_code(None if interrupted_by is True else interrupted_by)
    if report_failed:
        return ExitCode.REPORT_FAILED
    if summary.get("fake", 0) > 0:
        return ExitCode.FLAGGED
    if summary.get("errors", 0) > 0:
        return ExitCode.READ_ERRORS
    return ExitCode.OK
