"""Rich tables and the summary line of a scan."""

from __future__ import annotations

import os

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .codes import ExitCode, exit_code_for
from .scan import DISAGREE_MARK, ItemResult, ScanResult
from .text import safe_text

# --- Rich rendering ------------------------------------------------------------------------------

_VERDICT_STYLE = {"fake": "bold red", "real": "green", "uncertain": "yellow"}
_PROVENANCE_CELL = {
    "none": ("-", "dim"), "claims_generated": ("generated", "magenta"), "claims_captured": ("captured", "cyan"),
    "invalid_signature": ("invalid signature", "bold red"), "unreadable": ("unreadable", "yellow"),
}  # fmt: skip


def _provenance_cell(item: ItemResult) -> str:
    """The table's metadata cell: what the file claims, and the marker when that contradicts the pixels."""
    if item.provenance is None:
        return "[dim]not read[/]"
    text, style = _PROVENANCE_CELL[item.provenance.status]
    mark = f" [bold yellow]{DISAGREE_MARK}[/]" if item.provenance_disagrees else ""
    return f"[{style}]{text}[/]{mark}"


def _display_path(path: str) -> str:
    """A path as the table shows it: relative to the working directory when it lies below it (the reports
    keep the path exactly as given), so file names are not folded across lines in a narrow terminal."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return safe_text(path)
    return safe_text(rel if not rel.startswith("..") else path)


def render_table(result: ScanResult, console: Console, max_rows: int = 50) -> None:
    """Print a table of items (first ``max_rows`` in scan order, then "… N more") and the summary line."""
    table = Table(show_header=True, header_style="bold")
    table.add_column("path", overflow="fold")
    table.add_column("kind")
    table.add_column("status")
    table.add_column("faces", justify="right")
    table.add_column("score", justify="right")
    table.add_column("verdict")
    with_provenance = any(i.provenance is not None for i in result.items)
    if with_provenance:
        table.add_column("metadata")
    for item in result.items[:max_rows]:
        status = item.status
        if item.error is not None:
            status = f"error: {item.error['code']}"
        verdict = item.verdict or "-"
        style = _VERDICT_STYLE.get(verdict, "dim")
        table.add_row(
            escape(_display_path(item.path)),
            item.kind,
            escape(status),
            str(len(item.faces)),
            "-" if item.score is None else f"{item.score:.3f}",
            f"[{style}]{verdict}[/]",
            *([_provenance_cell(item)] if with_provenance else []),
        )
    console.print(table)
    hidden = len(result.items) - max_rows
    if hidden > 0:
        console.print(f"… {hidden} more item{'s' if hidden != 1 else ''} (the --json/--csv reports list all)")
    render_summary(result, console)


def summary_line(result: ScanResult) -> str:
    """One plain-text line of counts, e.g. "3 items (2 images, 1 video) · 4 faces · 1 fake · …"."""
    s = result.summary()

    def n(count: int, noun: str, plural: str | None = None) -> str:
        return f"{count} {noun if count == 1 else plural or noun + 's'}"

    duration = (result.finished_at - result.started_at).total_seconds()
    parts = [
        f"{n(s['items'], 'item')} ({n(s['images'], 'image')}, {n(s['videos'], 'video')})",
        n(s["faces"], "face"),
        f"{s['fake']} fake",
        f"{s['real']} real",
        f"{s['uncertain']} uncertain",
        f"{s['no_face']} without a face",
        n(s["errors"], "error"),
    ]
    p = s["provenance"]
    if p["read"]:
        parts.append(f"metadata: {p['claims_generated']} claim generated, {p['claims_captured']} captured"
                     + (f", {p['invalid_signature']} invalid signature" if p["invalid_signature"] else "")
                     + (f", {p['disagreements']} {DISAGREE_MARK} disagree with the pixels" if p["disagreements"]
                        else ""))
    parts.append(f"{duration:.1f} s")
    line = " · ".join(parts)
    return line + " · INTERRUPTED" if result.interrupted else line


def render_summary(result: ScanResult, console: Console) -> None:
    """Print the summary line, red when something was flagged, yellow when inputs failed."""
    style = {ExitCode.FLAGGED: "bold red", ExitCode.READ_ERRORS: "yellow"}.get(
        exit_code_for(result.summary()), "green"
    )
    console.print(escape(summary_line(result)), style=style)
