"""The scan report: result objects, its JSON schema, exit codes, writers (JSON/CSV/JSONL) and Rich tables.

The single source of truth for the report format is here: ``SCHEMA_ID``, the dataclasses whose
``to_json`` produce it, ``schemas/scan_report.schema.json`` that describes it, and ``ExitCode``.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import IntEnum
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mfclip_cli import __version__
from mfclip_cli.errors import MfclipError
from mfclip_cli.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text
from mfclip_cli.provenance import Provenance

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
    "x1", "y1", "x2", "y2", "det_score", "face_score", "path_b64",
    "provenance_status", "provenance_generator", "c2pa_signer", "c2pa_validation", "provenance_disagrees",
)  # fmt: skip
PROVENANCE_COUNTS = ("read", "claims_generated", "claims_captured", "invalid_signature", "unreadable",
                     "disagreements")  # fmt: skip
DISAGREE_MARK = "⚑"  # the table's marker: the file's metadata claims the opposite of the pixel verdict


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


def _safe_json(obj: Any) -> Any:
    """``obj`` with every string (keys too) made valid Unicode by :func:`safe_text`."""
    if isinstance(obj, str):
        return safe_text(obj)
    if isinstance(obj, Mapping):
        return {safe_text(str(k)): _safe_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_safe_json(v) for v in obj]
    return obj


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
class ExplanationPictures:
    """The arrays an explanation's PNGs are drawn from; held only until the pictures are written."""

    crop: np.ndarray  # (S, S, 3) RGB uint8: the crop the score came from
    heat: np.ndarray  # (S, S) float32, sums to 1


@dataclass(frozen=True)
class FaceExplanation:
    """What drove a face's score (``--explain``): a heat map over its crop and the noise branch's patch.

    ``patch_box`` [x1, y1, x2, y2) is in crop pixels (the crop is ``crop_size`` square); ``crop_to_image``
    is the 2x3 affine map from crop pixels to image (or frame) pixels. ``heatmap_png`` (16-bit grey, linear
    in heat) and ``overlay_png`` (crop + heat + patch outline) are set once written to ``--explain-dir``.
    """

    method: str
    backend: str
    target: str
    detail: str
    patch_index: int
    patch_box: tuple[int, int, int, int]
    crop_size: int
    crop_to_image: tuple[tuple[float, float, float], tuple[float, float, float]]
    heatmap_png: str | None = None
    overlay_png: str | None = None
    pictures: ExplanationPictures | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "backend": self.backend,
            "target": self.target,
            "detail": self.detail,
            "patch_index": int(self.patch_index),
            "patch_box": [int(v) for v in self.patch_box],
            "crop_size": int(self.crop_size),
            "crop_to_image": [[round(float(v), 6) for v in row] for row in self.crop_to_image],
            "heatmap_png": None if self.heatmap_png is None else safe_text(self.heatmap_png),
            "overlay_png": None if self.overlay_png is None else safe_text(self.overlay_png),
        }


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
    explanation: FaceExplanation | None = None  # --explain only

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
            **({"explanation": self.explanation.to_json()} if self.explanation is not None else {}),
        }


@dataclass(frozen=True)
class ItemResult:
    """One scanned file. The constructor enforces the same rules as the JSON schema:

    ok → score and verdict set, at least one face, no error; no_face → no score, verdict or faces;
    error → ``error`` {"code", "message"} set, no score or verdict; images have ``video`` None, videos
    that were read (ok / no_face) have it set.
    ``faces`` may be given as any sequence and is stored as a tuple. ``provenance`` is what the file's
    metadata claims (None: not read, e.g. ``--no-provenance``); it never changes the score or verdict.
    """

    path: str
    kind: str
    status: str
    error: Mapping[str, str] | None = None
    score: float | None = None
    verdict: str | None = None
    faces: Sequence[FaceResult] = ()
    video: Mapping[str, Any] | None = None
    provenance: Provenance | None = None

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
        if self.video is not None and not (
            {"frames_read", "frames_scored", "aggregation"} <= set(self.video)
            <= {"frames_read", "frames_scored", "aggregation", "warnings"}
        ):
            raise ValueError(
                f"{where}: video info needs frames_read, frames_scored, aggregation (and optional warnings)"
            )

    @classmethod
    def failed(cls, path: str | os.PathLike, kind: str, code: str, message: str,
               provenance: Provenance | None = None) -> ItemResult:
        """An item that could not be processed (status "error")."""
        return cls(path=str(path), kind=kind, status="error", error={"code": code, "message": message},
                   provenance=provenance)

    @property
    def provenance_disagrees(self) -> bool:
        """True when the metadata claims the opposite of the pixel verdict: claims generated but scored real,
        or claims captured (e.g. a signed camera capture) but scored fake. The pixel verdict stays the verdict."""
        status = self.provenance.status if self.provenance is not None else None
        return (status, self.verdict) in (("claims_generated", "real"), ("claims_captured", "fake"))

    def provenance_json(self) -> dict[str, Any] | None:
        """The item's ``provenance`` block (None when it was not read)."""
        if self.provenance is None:
            return None
        return _safe_json({**self.provenance.to_json(), "disagrees_with_pixels": self.provenance_disagrees})

    def to_json(self) -> dict[str, Any]:
        """The item's entry in the report (also one line of the JSONL stream).

        ``path`` is always valid Unicode (undecodable bytes as ``\\xNN`` escapes); when the file name is not
        valid UTF-8, ``path_b64`` (base64 of the exact bytes) follows it so no result loses its file.
        """
        exact = path_b64(self.path)
        return {
            "path": safe_text(self.path),
            **({"path_b64": exact} if exact is not None else {}),
            "kind": self.kind,
            "status": self.status,
            "error": None
            if self.error is None
            else {"code": self.error["code"], "message": safe_text(self.error["message"])},
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
                    **(
                        {"warnings": [safe_text(str(w)) for w in self.video["warnings"]]}
                        if self.video.get("warnings")
                        else {}
                    ),
                }
            ),
            "provenance": self.provenance_json(),
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

    def summary(self) -> dict[str, Any]:
        """Counts of items by kind, verdict and status, the total number of faces, and under ``provenance``
        the items whose metadata was read, by what it claims, and how many disagree with their verdict."""
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
            "provenance": provenance_counts(items),
        }

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (schema ``mfclip.scan/1``)."""
        return {
            "schema": SCHEMA_ID,
            "tool": {"name": self.tool.name, "version": self.tool.version},
            "model": {
                "path": safe_text(str(self.model.path)),
                "sha256": self.model.sha256,
                "threshold": _round(self.model.threshold, SCORE_DECIMALS),
            },
            "settings": _safe_json(dict(self.settings)),
            "started_at": format_utc(self.started_at),
            "finished_at": format_utc(self.finished_at),
            "interrupted": bool(self.interrupted),
            "summary": self.summary(),
            "items": [i.to_json() for i in self.items],
        }


def provenance_counts(items: Iterable[ItemResult]) -> dict[str, int]:
    """How many items had their metadata read, claim generation / capture, carry an invalid or unreadable
    manifest, and disagree with their pixel verdict (see :attr:`ItemResult.provenance_disagrees`)."""
    counts = dict.fromkeys(PROVENANCE_COUNTS, 0)
    for item in items:
        if item.provenance is None:
            continue
        counts["read"] += 1
        if item.provenance.status in counts:
            counts[item.provenance.status] += 1
        counts["disagreements"] += item.provenance_disagrees
    return counts


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
        tail = [cell(x) for x in [j.get("path_b64"), *_provenance_cells(item)]]
        if not j["faces"]:
            yield [cell(x) for x in head] + [""] * (len(CSV_COLUMNS) - len(head) - len(tail)) + tail
        for k, f in enumerate(j["faces"]):
            yield [
                cell(x) for x in head + [k, f["frame"], f["time_s"], *f["box"], f["det_score"], f["score"]]
            ] + tail


def _provenance_cells(item: ItemResult) -> list[Any]:
    """provenance_status, provenance_generator, c2pa_signer, c2pa_validation, provenance_disagrees."""
    p = item.provenance
    if p is None:
        return [None] * 5
    validation = p.c2pa.validation_state
    if validation is not None and p.c2pa.validation_codes:
        validation += f" ({', '.join(p.c2pa.validation_codes)})"
    return [p.status, safe_text(p.generator) if p.generator else None,
            safe_text(p.c2pa.signer) if p.c2pa.signer else None, validation, int(item.provenance_disagrees)]


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
    line goes out in unbuffered writes, and a write that fails (full disk) is rolled back to the last
    whole line, so the file only ever holds whole lines. The file is created (truncated unless
    ``append=True``) by :meth:`open` or the first :meth:`write`, never before: a scan that fails or is
    stopped during start-up leaves an older stream untouched.
    """

    def __init__(self, path: str | os.PathLike, append: bool = False):
        self.path = Path(path)
        self.append = append
        self._fh: io.RawIOBase | None = None
        self._end = 0  # bytes of whole lines in the file

    def __enter__(self) -> Self:
        return self

    def open(self) -> None:
        """Create (or truncate, or open for appending) the file now; does nothing when already open."""
        if self._fh is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab" if self.append else "wb", buffering=0)  # noqa: SIM115 - closed by close()
        self._end = self._fh.seek(0, os.SEEK_END)

    def write(self, item: ItemResult) -> None:
        """Append ``item`` as one line; on OSError the partial line is removed and the error re-raised."""
        self.open()
        line = (json.dumps(item.to_json(), ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        try:
            self._write_bytes(line)
        except OSError:
            try:
                self._fh.truncate(self._end)
            except OSError:  # the line stays cut; readers skip a last line without its newline
                pass
            raise
        self._end += len(line)

    def _write_bytes(self, data: bytes) -> None:
        view = memoryview(data)
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


# --- explanation pictures (--explain-dir) --------------------------------------------------------


class ExplanationWriter:
    """Writes the pictures of each explained face into ``--explain-dir`` as its item finishes (atomic PNGs):
    ``NNNNN_<stem>_faceK_overlay.png`` (crop + heat + the noise branch's patch outlined) and
    ``NNNNN_<stem>_faceK_heat.png`` (16-bit grey, linear in heat), NNNNN the item's index in the report.

    Called as ``writer(index, item)`` (run_scan's ``write_explanations``); returns the item with the paths
    set and the arrays dropped. A picture that cannot be written (full disk…) leaves its path null and is
    remembered in ``failure``; the scan goes on.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.failure: str | None = None

    def __call__(self, index: int, item: ItemResult) -> ItemResult:
        if not any(f.explanation is not None and f.explanation.pictures is not None for f in item.faces):
            return item
        stem = _file_stem(item.path)
        faces = [self._write_face(f, f"{index:05d}_{stem}_face{k}") for k, f in enumerate(item.faces)]
        return replace(item, faces=faces)

    def _write_face(self, face: FaceResult, name: str) -> FaceResult:
        e = face.explanation
        if e is None or e.pictures is None:
            return face
        from mfclip_cli.explain import heat_to_uint16, render_overlay

        overlay = render_overlay(e.pictures.crop, e.pictures.heat, e.patch_box)
        paths = {}
        for key, suffix, picture in (("overlay_png", "overlay", overlay[:, :, ::-1]),
                                     ("heatmap_png", "heat", heat_to_uint16(e.pictures.heat))):
            path = self.folder / f"{name}_{suffix}.png"
            try:
                atomic_write_bytes(path, _png_bytes(picture))
                paths[key] = str(path)
            except OSError as exc:
                self.failure = self.failure or f"{safe_text(str(path))}: {_reason(exc)}"
                paths[key] = None
        return replace(face, explanation=replace(e, pictures=None, **paths))


def _png_bytes(picture: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", picture)
    if not ok:
        raise OSError(f"PNG encoding failed for a {picture.dtype} {picture.shape} picture")
    return buf.tobytes()


def _file_stem(path: str) -> str:
    """A short, portable file-name stem from an input path (its stem, odd characters as "_")."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(safe_text(path)).stem).strip("._")
    return stem[:48] or "item"


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
        raise MfclipError(f"{t.describe()}: cannot write in {parent} ({_reason(exc)}). Choose a writable "
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
        raise MfclipError(f"{t.describe()}: cannot write in it ({_reason(exc)}). Choose a writable folder.") from None


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


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


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
                from mfclip_cli.html_report import DEFAULT_THUMBS, write_html

                write_html(result, t.path, max_thumbs=DEFAULT_THUMBS if html_thumbs is None else html_thumbs)
        except OSError as exc:
            failures.append(WriteFailure(t, _reason(exc)))
    return failures


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
