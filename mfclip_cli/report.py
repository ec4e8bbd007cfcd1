"""The scan report: result objects, its JSON schema, exit codes, writers (JSON/CSV/JSONL) and Rich tables.

The single source of truth for the report format is here: ``SCHEMA_ID``, the dataclasses whose
``to_json`` produce it, ``schemas/scan_report.schema.json`` that describes it, and ``ExitCode``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mfclip_cli import __version__
from mfclip_cli.fsutil import atomic_write_json, atomic_write_text

SCHEMA_ID = "mfclip.scan/1"
TOOL_NAME = "mfclip"

KINDS = ("image", "video")
STATUSES = ("ok", "no_face", "error")
VERDICTS = ("fake", "real", "uncertain")

# Decimal places in the report: scores are probabilities, boxes are pixels, times are seconds.
SCORE_DECIMALS = 6
PIXEL_DECIMALS = 2
TIME_DECIMALS = 3

CSV_COLUMNS = (
    "path", "kind", "status", "error_code", "score", "verdict", "face_index", "frame", "time_s",
    "x1", "y1", "x2", "y2", "det_score", "face_score",
)  # fmt: skip


class ExitCode(IntEnum):
    """Exit status of ``mfclip scan`` (the other commands use OK and FATAL only)."""

    OK = 0  # nothing flagged
    FLAGGED = 1  # at least one item's verdict is fake
    FATAL = 2  # usage or fatal error: bad option, missing or incompatible weights
    READ_ERRORS = 3  # nothing flagged, but some inputs could not be read


def exit_code_for(summary: Mapping[str, int]) -> ExitCode:
    """The scan's exit code from its summary: FLAGGED if any fake, else READ_ERRORS if any error, else OK."""
    if summary.get("fake", 0) > 0:
        return ExitCode.FLAGGED
    if summary.get("errors", 0) > 0:
        return ExitCode.READ_ERRORS
    return ExitCode.OK


def verdict_for(score: float, threshold: float, uncertain_band: float = 0.0) -> str:
    """The verdict of one score: "uncertain" within ``uncertain_band`` of the threshold, else fake/real.

    |score - threshold| < band → "uncertain"; score >= threshold → "fake"; otherwise "real".
    """
    if uncertain_band < 0:
        raise ValueError(f"uncertain_band must be >= 0, got {uncertain_band}")
    if abs(score - threshold) < uncertain_band:
        return "uncertain"
    return "fake" if score >= threshold else "real"


def utc_now() -> datetime:
    """The current time as a timezone-aware UTC datetime (for ``started_at`` / ``finished_at``)."""
    return datetime.now(UTC)


def format_utc(t: datetime) -> str:
    """ISO-8601 UTC with milliseconds and a ``Z`` suffix; naive datetimes are refused (ambiguous)."""
    if t.tzinfo is None:
        raise ValueError("report timestamps must be timezone-aware (use report.utc_now())")
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(float(x), digits)


def _check_probability(name: str, x: float | None) -> None:
    if x is not None and not (math.isfinite(x) and 0.0 <= x <= 1.0):
        raise ValueError(f"{name} must be a probability in [0, 1], got {x}")


@dataclass(frozen=True)
class FaceResult:
    """One detected and scored face: box [x1, y1, x2, y2] in pixels, optional 5-point landmarks.

    ``frame`` and ``time_s`` locate the face in a video and are None for images.
    """

    box: tuple[float, float, float, float]
    landmarks: tuple[tuple[float, float], ...] | None
    det_score: float
    score: float
    frame: int | None = None
    time_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "box", tuple(float(v) for v in self.box))
        if len(self.box) != 4:
            raise ValueError(f"box must have 4 values [x1, y1, x2, y2], got {len(self.box)}")
        if self.landmarks is not None:
            object.__setattr__(self, "landmarks", tuple((float(p[0]), float(p[1])) for p in self.landmarks))
        _check_probability("det_score", self.det_score)
        _check_probability("face score", self.score)

    def to_json(self) -> dict[str, Any]:
        """The face's entry in the report."""
        return {
            "box": [round(v, PIXEL_DECIMALS) for v in self.box],
            "landmarks": (
                None
                if self.landmarks is None
                else [[round(x, PIXEL_DECIMALS), round(y, PIXEL_DECIMALS)] for x, y in self.landmarks]
            ),
            "det_score": _round(self.det_score, SCORE_DECIMALS),
            "score": _round(self.score, SCORE_DECIMALS),
            "frame": None if self.frame is None else int(self.frame),
            "time_s": _round(self.time_s, TIME_DECIMALS),
        }


@dataclass(frozen=True)
class ItemResult:
    """One scanned file. The constructor enforces the same rules as the JSON schema:

    ok → score and verdict set, at least one face, no error; no_face → no score, verdict or faces;
    error → ``error`` {"code", "message"} set, no score or verdict; images have ``video`` None, videos
    that were read (ok / no_face) have it set.
    ``faces`` may be given as any sequence and is stored as a tuple.
    """

    path: str
    kind: str
    status: str
    error: Mapping[str, str] | None = None
    score: float | None = None
    verdict: str | None = None
    faces: Sequence[FaceResult] = ()
    video: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", str(self.path))
        object.__setattr__(self, "faces", tuple(self.faces))
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if self.verdict is not None and self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS} or None, got {self.verdict!r}")
        _check_probability("score", self.score)
        where = f"item {self.path!r}"
        if self.status == "ok":
            if self.score is None or self.verdict is None or not self.faces or self.error is not None:
                raise ValueError(f"{where}: status 'ok' needs a score, a verdict, faces and no error")
        elif self.score is not None or self.verdict is not None:
            raise ValueError(f"{where}: status {self.status!r} has no score or verdict")
        if self.status == "no_face" and (self.faces or self.error is not None):
            raise ValueError(f"{where}: status 'no_face' has no faces and no error")
        if self.status == "error" and (self.error is None or set(self.error) != {"code", "message"}):
            raise ValueError(f"{where}: status 'error' needs error={{'code': ..., 'message': ...}}")
        if self.kind == "image" and self.video is not None:
            raise ValueError(f"{where}: an image has no video info")
        if self.kind == "video" and self.status != "error" and self.video is None:
            raise ValueError(
                f"{where}: a read video needs video info (frames_read, frames_scored, aggregation)"
            )
        if self.video is not None and set(self.video) != {"frames_read", "frames_scored", "aggregation"}:
            raise ValueError(f"{where}: video info needs exactly frames_read, frames_scored, aggregation")

    @classmethod
    def failed(cls, path: str | os.PathLike, kind: str, code: str, message: str) -> ItemResult:
        """An item that could not be processed (status "error")."""
        return cls(path=str(path), kind=kind, status="error", error={"code": code, "message": message})

    def to_json(self) -> dict[str, Any]:
        """The item's entry in the report (also one line of the JSONL stream)."""
        return {
            "path": self.path,
            "kind": self.kind,
            "status": self.status,
            "error": None
            if self.error is None
            else {"code": self.error["code"], "message": self.error["message"]},
            "score": _round(self.score, SCORE_DECIMALS),
            "verdict": self.verdict,
            "faces": [f.to_json() for f in self.faces],
            "video": (
                None
                if self.video is None
                else {
                    "frames_read": int(self.video["frames_read"]),
                    "frames_scored": int(self.video["frames_scored"]),
                    "aggregation": str(self.video["aggregation"]),
                }
            ),
        }


@dataclass(frozen=True)
class ToolInfo:
    """Which program wrote the report."""

    name: str = TOOL_NAME
    version: str = __version__


@dataclass(frozen=True)
class ModelInfo:
    """Which weights scored the items: checkpoint path, its SHA-256 and the decision threshold used."""

    path: str
    sha256: str
    threshold: float


@dataclass(frozen=True)
class ScanResult:
    """Everything a scan produced; the JSON writer and the Rich renderer both read it."""

    model: ModelInfo
    settings: Mapping[str, Any]
    started_at: datetime
    finished_at: datetime
    items: Sequence[ItemResult]
    interrupted: bool = False
    tool: ToolInfo = field(default_factory=ToolInfo)

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(self.items))

    def summary(self) -> dict[str, int]:
        """Counts of items by kind, verdict and status, and the total number of faces."""
        items = self.items
        return {
            "items": len(items),
            "images": sum(i.kind == "image" for i in items),
            "videos": sum(i.kind == "video" for i in items),
            "faces": sum(len(i.faces) for i in items),
            "fake": sum(i.verdict == "fake" for i in items),
            "real": sum(i.verdict == "real" for i in items),
            "uncertain": sum(i.verdict == "uncertain" for i in items),
            "no_face": sum(i.status == "no_face" for i in items),
            "errors": sum(i.status == "error" for i in items),
        }

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (schema ``mfclip.scan/1``)."""
        return {
            "schema": SCHEMA_ID,
            "tool": {"name": self.tool.name, "version": self.tool.version},
            "model": {
                "path": str(self.model.path),
                "sha256": self.model.sha256,
                "threshold": _round(self.model.threshold, SCORE_DECIMALS),
            },
            "settings": dict(self.settings),
            "started_at": format_utc(self.started_at),
            "finished_at": format_utc(self.finished_at),
            "interrupted": bool(self.interrupted),
            "summary": self.summary(),
            "items": [i.to_json() for i in self.items],
        }


def load_scan_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the scan report, read from the installed package."""
    text = resources.files("mfclip_cli").joinpath("schemas/scan_report.schema.json").read_text("utf-8")
    return json.loads(text)


# --- writers -------------------------------------------------------------------------------------


def write_json(result: ScanResult, path: str | os.PathLike) -> None:
    """Write the report atomically: readers see the old file or the whole new one."""
    atomic_write_json(path, result.to_json())


def _csv_rows(result: ScanResult) -> Iterable[list[Any]]:
    def cell(x: Any) -> Any:
        return "" if x is None else x

    for item in result.items:
        j = item.to_json()
        head = [j["path"], j["kind"], j["status"], (j["error"] or {}).get("code"), j["score"], j["verdict"]]
        if not j["faces"]:
            yield [cell(x) for x in head] + [""] * (len(CSV_COLUMNS) - len(head))
        for k, f in enumerate(j["faces"]):
            yield [
                cell(x) for x in head + [k, f["frame"], f["time_s"], *f["box"], f["det_score"], f["score"]]
            ]


def write_csv(result: ScanResult, path: str | os.PathLike) -> None:
    """Write one row per face (an item without faces gets one row with empty face columns), atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(_csv_rows(result))
    atomic_write_text(path, buf.getvalue())


class JsonlWriter:
    """Streams one JSON line per item as it finishes (``with JsonlWriter(p) as w: w.write(item)``).

    Unlike the JSON and CSV reports this file grows during the scan, so a reader can follow it; each
    line goes out in a single unbuffered write, so a crash leaves only whole lines behind. The file is
    truncated on open unless ``append=True``.
    """

    def __init__(self, path: str | os.PathLike, append: bool = False):
        self.path = Path(path)
        self.append = append
        self._fh: io.RawIOBase | None = None

    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab" if self.append else "wb", buffering=0)
        return self

    def write(self, item: ItemResult) -> None:
        """Append ``item`` as one line."""
        if self._fh is None:
            raise RuntimeError("JsonlWriter.write called outside its `with` block")
        line = (json.dumps(item.to_json(), ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        view = memoryview(line)
        while view:  # a raw write may be partial; finish the line before anything else
            view = view[self._fh.write(view) :]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --- Rich rendering ------------------------------------------------------------------------------

_VERDICT_STYLE = {"fake": "bold red", "real": "green", "uncertain": "yellow"}


def _display_path(path: str) -> str:
    """A path as the table shows it: relative to the working directory when it lies below it (the reports
    keep the path exactly as given), so file names are not folded across lines in a narrow terminal."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return rel if not rel.startswith("..") else path


def render_table(result: ScanResult, console: Console, max_rows: int = 50) -> None:
    """Print a table of items (first ``max_rows`` in scan order, then "… N more") and the summary line."""
    table = Table(show_header=True, header_style="bold")
    table.add_column("path", overflow="fold")
    table.add_column("kind")
    table.add_column("status")
    table.add_column("faces", justify="right")
    table.add_column("score", justify="right")
    table.add_column("verdict")
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
        f"{duration:.1f} s",
    ]
    line = " · ".join(parts)
    return line + " · INTERRUPTED" if result.interrupted else line


def render_summary(result: ScanResult, console: Console) -> None:
    """Print the summary line, red when something was flagged, yellow when inputs failed."""
    style = {ExitCode.FLAGGED: "bold red", ExitCode.READ_ERRORS: "yellow"}.get(
        exit_code_for(result.summary()), "green"
    )
    console.print(escape(summary_line(result)), style=style)
