"""Where reports go: targets checked before the scan starts, and written after it."""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mfclip_cli.errors import MfclipError

from .scan import ScanResult
from .text import os_reason, safe_text
from .writers import write_csv, write_json

# --- report targets ------------------------------------------------------------------------------
# The one place that names where reports go and checks those paths: against each other, against the
# file system (before the scan starts) and against the scan's inputs (before anything is written).

STDOUT = "-"
FOLDER_OPTIONS = ("--explain-dir",)


@dataclass(frozen=True)
class ReportTarget:
    """One report a scan writes: the option that asked for it (``--json``…) and its path ("-": stdout)."""

    option: str
    path: str

    @property
    def to_stdout(self) -> bool:
        return self.path == STDOUT

    @property
    def is_folder(self) -> bool:
        """A folder the scan fills with files (``--explain-dir``), not one report file."""
        return self.option in FOLDER_OPTIONS

    def describe(self) -> str:
        return f"{self.option} {safe_text(self.path)}"


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def _check_writable_target(t: ReportTarget) -> None:
    path = t.path
    if os.path.isdir(path):
        raise MfclipError(f"{t.describe()}: is a folder; give a file name for the report (e.g. {path}/report"
                          f"{Path(path).suffix or '.' + t.option.lstrip('-')}).")
    if os.path.lexists(path) and not os.path.exists(path):
        raise MfclipError(f"{t.describe()}: is a broken symbolic link; remove it or choose another report path.")
    parent = os.path.dirname(os.path.abspath(path))
    existing = parent
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise MfclipError(f"{t.describe()}: {existing} is a file, not a folder, so the report cannot be "
                          f"written there. Choose another report path.")
    try:
        os.makedirs(parent, exist_ok=True)  # the writers create it anyway; failing now costs no scan
        fd, probe = tempfile.mkstemp(prefix=".mfclip-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise MfclipError(f"{t.describe()}: cannot write in {parent} ({os_reason(exc)}). Choose a writable "
                          f"folder for the report.") from None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise MfclipError(f"{t.describe()}: the file exists and is not writable. Choose another report path.")


def _check_folder_target(t: ReportTarget) -> None:
    path = t.path
    if os.path.lexists(path) and not os.path.isdir(path):
        raise MfclipError(f"{t.describe()}: exists and is not a folder; give a folder for the pictures.")
    existing = os.path.abspath(path)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise MfclipError(f"{t.describe()}: {existing} is a file, not a folder. Choose another folder.")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".mfclip-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise MfclipError(f"{t.describe()}: cannot write in it ({os_reason(exc)}). Choose a writable folder.") from None


def plan_report_targets(json_out: str | os.PathLike | None = None, csv_out: str | os.PathLike | None = None,
                        jsonl_out: str | os.PathLike | None = None,
                        path_list: str | None = None, html_out: str | os.PathLike | None = None,
                        explain_dir: str | os.PathLike | None = None) -> list[ReportTarget]:
    """The reports a scan will write, checked before it starts: each target is a writable file path (not a
    folder, its folder writable), no two targets are the same file, none is the ``--from-file`` list;
    ``--explain-dir`` is a writable folder (created now). Only ``--json`` may be "-" (stdout). Raises
    MfclipError naming the option and path."""
    targets = [ReportTarget(opt, os.fspath(p)) for opt, p in
               (("--json", json_out), ("--csv", csv_out), ("--jsonl", jsonl_out), ("--html", html_out),
                ("--explain-dir", explain_dir)) if p is not None]
    for t in targets:
        if not t.path:
            raise MfclipError(f"{t.option} needs a file path")
        if t.to_stdout and t.option != "--json":
            raise MfclipError(f"{t.option} cannot write to stdout ('-'); only --json can. Give a file path.")
    for t in targets:
        if t.is_folder:
            _check_folder_target(t)
    files = [t for t in targets if not t.to_stdout and not t.is_folder]
    for i, a in enumerate(files):
        for b in files[i + 1:]:
            if _same_file(a.path, b.path):
                raise MfclipError(f"{a.describe()} and {b.describe()} are the same file: one report would "
                                  f"overwrite the other. Give each report its own path.")
        if path_list is not None and path_list != STDOUT and _same_file(a.path, path_list):
            raise MfclipError(f"{a.describe()} is the --from-file list itself; writing the report would "
                              f"destroy it. Choose another report path.")
        _check_writable_target(a)
    return targets


def check_targets_against_inputs(targets: Sequence[ReportTarget], inputs: Iterable[str]) -> None:
    """Refuse report targets that are one of the scan's inputs (a file named, or found in a scanned folder):
    writing the report would destroy it; and folder targets (``--explain-dir``) that hold an input (their
    pictures would land among the scanned files). Called once inputs are collected, before any report is
    opened."""
    inputs = list(inputs)
    _check_folders_against_inputs([t for t in targets if t.is_folder], inputs)
    files = [t for t in targets if not t.to_stdout and not t.is_folder and os.path.lexists(t.path)]
    if not files:
        return
    keys = {}
    for t in files:
        keys.setdefault(os.path.realpath(t.path), t)
    for path in inputs:
        real = os.path.realpath(path)
        t = keys.get(real)
        if t is None and os.path.lexists(path):
            t = next((f for f in files if _same_file(f.path, path)), None) if _maybe_hardlink(path) else None
        if t is not None:
            raise MfclipError(f"{t.describe()}: is one of the scanned inputs ({safe_text(path)}); writing the "
                              f"report would destroy it. Write reports outside the scanned files.")


def _check_folders_against_inputs(folders: Sequence[ReportTarget], inputs: Sequence[str]) -> None:
    for t in folders:
        root = os.path.realpath(t.path)
        for path in inputs:
            real = os.path.realpath(path)
            if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
                raise MfclipError(f"{t.describe()}: holds a scanned input ({safe_text(path)}); pictures written "
                                  f"there would mix with (and be scanned with) your files. Choose a folder "
                                  f"outside the scanned paths.")


def _maybe_hardlink(path: str) -> bool:
    try:
        return os.stat(path).st_nlink > 1
    except OSError:
        return False


@dataclass(frozen=True)
class WriteFailure:
    """A report that could not be written, and why (the OS's words)."""

    target: ReportTarget
    reason: str

    def message(self) -> str:
        return (f"could not write the {self.target.describe()} report: {self.reason}. The other reports "
                f"(if any) hold every result; free space or choose another path and rerun.")


def write_reports(result: ScanResult, targets: Sequence[ReportTarget], stdout: io.TextIOBase | None = None,
                  html_thumbs: int | None = None) -> list[WriteFailure]:
    """Write every --json, --csv and --html target (--jsonl and --explain-dir fill during the scan); returns
    the ones that failed. ``html_thumbs`` caps the items the HTML page shows pictures for.

    One failing target (full disk, read-only file system, vanished folder) never stops the others.
    """
    failures = []
    for t in targets:
        try:
            if t.option == "--json" and t.to_stdout:
                out = stdout if stdout is not None else sys.stdout
                out.write(json.dumps(result.to_json(), indent=2) + "\n")
                out.flush()
            elif t.option == "--json":
                write_json(result, t.path)
            elif t.option == "--csv":
                write_csv(result, t.path)
            elif t.option == "--html":
                from mfclip_cli.report.html import DEFAULT_THUMBS, write_html

                write_html(result, t.path, max_thumbs=DEFAULT_THUMBS if html_thumbs is None else html_thumbs)
        except OSError as exc:
            failures.append(WriteFailure(t, os_reason(exc)))
    return failures
