"""The scan report's result objects (:class:`ScanResult` and what it holds) and its schema: ``to_json`` produces the format ``schemas/scan_report.schema.json`` describes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from importlib import resources
from typing import Any

import numpy as np

from mfclip_cli import __version__
from mfclip_cli.provenance_claims import Provenance

from .text import check_probability, format_utc, path_b64, round_to, safe_json, safe_text

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


@dataclass(frozen=True)
class ExplanationPictures:
    """The arrays an explanation's PNGs are drawn from: they travel in a scan's "item" event only (for the
    report layer's picture writer); the scan's result holds its items without them."""

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
        check_probability("det_score", self.det_score)
        check_probability("face score", self.score)

    def to_json(self) -> dict[str, Any]:
        """The face's entry in the report."""
        return {
            "box": [round(v, PIXEL_DECIMALS) for v in self.box],
            "landmarks": (
                None
                if self.landmarks is None
                else [[round(x, PIXEL_DECIMALS), round(y, PIXEL_DECIMALS)] for x, y in self.landmarks]
            ),
            "det_score": round_to(self.det_score, SCORE_DECIMALS),
            "score": round_to(self.score, SCORE_DECIMALS),
            "frame": None if self.frame is None else int(self.frame),
            "time_s": round_to(self.time_s, TIME_DECIMALS),
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
        check_probability("score", self.score)
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

    def without_pictures(self) -> ItemResult:
        """This item with its explanations' arrays dropped (itself when it holds none)."""
        if not any(f.explanation is not None and f.explanation.pictures is not None for f in self.faces):
            return self
        return replace(self, faces=[f if f.explanation is None else
                                    replace(f, explanation=replace(f.explanation, pictures=None))
                                    for f in self.faces])

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
        return safe_json({**self.provenance.to_json(), "disagrees_with_pixels": self.provenance_disagrees})

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
            "score": round_to(self.score, SCORE_DECIMALS),
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
                "threshold": round_to(self.model.threshold, SCORE_DECIMALS),
            },
            "settings": safe_json(dict(self.settings)),
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
