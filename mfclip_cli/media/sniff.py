"""What a file is: the one media-extension table and recognition by magic numbers (the extension is only a hint)."""

from __future__ import annotations

import os
from typing import Literal

IMAGE_EXTS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".tif", ".tiff", ".webp"}
)
VIDEO_EXTS: frozenset[str] = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})
# The one media-extension table: scan discovery and the training/eval dataset layouts both read it.
MEDIA_EXTS: frozenset[str] = IMAGE_EXTS | VIDEO_EXTS

Kind = Literal["image", "video"]

_SNIFF_BYTES = 32
# ISO-BMFF brands that are still images (HEIF/AVIF); every other ftyp file is treated as video.
_IMAGE_FTYP_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"mif1", b"msf1", b"avif", b"avis"}
# Old QuickTime files may start with one of these atoms instead of ftyp.
_QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}


# --------------------------------------------------------------------------------------------- sniffing


def sniff_kind(head: bytes) -> Kind | None:
    """The media kind the first bytes of a file announce, or None when no known signature matches."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image"
    if head.startswith(b"BM") and len(head) >= 14:
        return "image"
    if head.startswith(b"RIFF") and len(head) >= 12:
        if head[8:12] == b"WEBP":
            return "image"
        if head[8:12] in (b"AVI ", b"AVIX"):
            return "video"
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: Matroska / WebM
        return "video"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return "image" if head[8:12] in _IMAGE_FTYP_BRANDS else "video"
    if len(head) >= 8 and head[4:8] in _QUICKTIME_ATOMS:
        return "video"
    return None


def kind_from_extension(path: str) -> Kind | None:
    """The media kind an extension suggests (only a hint: content wins)."""
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    return None


def is_media_file(path: str | os.PathLike) -> bool:
    """True for an image or video file by extension (case-insensitive)."""
    return kind_from_extension(os.fspath(path)) is not None


def _read_head(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(_SNIFF_BYTES)


def sniff_file(path: str) -> Kind | None:
    """Kind by content; None when unknown or unreadable."""
    try:
        return sniff_kind(_read_head(path))
    except OSError:
        return None


def classify(path: str) -> Kind | None:
    """Kind by content, else by extension (a broken file with an image name still becomes an item).

    Raises OSError when the file cannot be read.
    """
    return sniff_kind(_read_head(path)) or kind_from_extension(path)
