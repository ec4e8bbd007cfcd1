"""Inputs and safe decoding: walk paths into media items, decode images, sample video frames.

Images and videos are recognised by their first bytes (magic numbers); the file extension is only a
hint for files whose content is unknown. Decoding never trusts a file: every failure becomes a
:class:`~mfclip_cli.errors.MediaError` with a short ``code`` and a message naming the path.
"""

from __future__ import annotations

import errno
import glob
import io
import math
import os
import re
import stat
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

import numpy as np

from mfclip_cli.errors import MediaError, MfclipError

IMAGE_EXTS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".tif", ".tiff", ".webp"}
)
VIDEO_EXTS: frozenset[str] = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})
# The one media-extension table: scan discovery and the training/eval dataset layouts both read it.
MEDIA_EXTS: frozenset[str] = IMAGE_EXTS | VIDEO_EXTS

# Composite colour for transparent pixels: mid-grey is neutral for a detector (close to the mean of
# the usual normalisations) and, unlike dropping alpha, never exposes whatever RGB hides under alpha=0.
ALPHA_BACKGROUND = 128

DEFAULT_VIDEO_FPS = 25.0

Kind = Literal["image", "video"]

_SNIFF_BYTES = 32
# ISO-BMFF brands that are still images (HEIF/AVIF); every other ftyp file is treated as video.
_IMAGE_FTYP_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"mif1", b"msf1", b"avif", b"avis"}
# Old QuickTime files may start with one of these atoms instead of ftyp.
_QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}


@dataclass(frozen=True)
class InputItem:
    """One media file to process; ``path`` is spelled as the user gave it (or joined under a folder)."""

    path: str
    kind: Kind


@dataclass(frozen=True)
class InputError:
    """A path that could not become an item (missing, unreadable, not media, no media in a folder)."""

    path: str
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "code": self.code, "message": self.message}


@dataclass(frozen=True, eq=False)
class VideoFrame:
    """A decoded video frame: its index in decode order, its timestamp and RGB uint8 pixels."""

    index: int
    time_s: float
    image: np.ndarray


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


def _sniff_or_none(path: str) -> Kind | None:
    try:
        return sniff_kind(_read_head(path))
    except OSError:
        return None


def _classify(path: str) -> Kind | None:
    """Kind by content, else by extension (a broken file with an image name still becomes an item).

    Raises OSError when the file cannot be read.
    """
    return sniff_kind(_read_head(path)) or kind_from_extension(path)


# --------------------------------------------------------------------------------------------- walking


def _walk_files(folder: str, visited: set[str], on_error, on_bad_link=None) -> Iterator[str]:
    """Files under ``folder``, depth first in sorted name order, skipping dot-files and dot-folders.

    Folder symlinks are followed, but each real folder is entered once (``visited``), so symlink loops
    end. ``on_error(path, exc)`` is called for folders that cannot be listed, ``on_bad_link(path, exc)``
    for symlinks that cannot be resolved (broken, or a loop of links).
    """
    real = os.path.realpath(folder)
    if real in visited:
        return
    visited.add(real)
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        on_error(folder, exc)
        return
    for entry in entries:
        if entry.name.startswith("."):  # hidden files, incl. macOS "._x.jpg" resource forks
            continue
        path = os.path.join(folder, entry.name)
        try:
            is_dir = entry.is_dir()  # follows symlinks; loops are cut by ``visited``
            is_file = not is_dir and entry.is_file()
        except OSError as exc:  # ELOOP: a loop of symlinks
            if on_bad_link is not None:
                on_bad_link(path, exc)
            continue
        if not is_dir and not is_file and entry.is_symlink() and on_bad_link is not None:
            try:
                os.stat(path)
            except OSError as exc:
                on_bad_link(path, exc)
                continue
        if is_dir:
            yield from _walk_files(path, visited, on_error, on_bad_link)
        elif is_file:  # broken symlinks, sockets, fifos are not media
            yield path


def _translate_glob(parts: list[str]) -> re.Pattern[str]:
    """Regex for a relative "/"-joined path matching glob components (``*``, ``?``, ``[..]``, ``**``)."""
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
            continue
        j, n, comp = 0, len(part), []
        while j < n:
            c = part[j]
            if c == "*":
                comp.append("[^/]*")
            elif c == "?":
                comp.append("[^/]")
            elif c == "[":
                start = j + 1
                start += part[start : start + 1] == "!"
                start += part[start : start + 1] == "]"
                k = part.find("]", start)
                if k == -1:
                    comp.append(re.escape(c))
                else:
                    body = part[j + 1 : k]
                    body = "^" + body[1:] if body.startswith("!") else body
                    comp.append("[" + body.replace("\\", "\\\\") + "]")
                    j = k
            else:
                comp.append(re.escape(c))
            j += 1
        out.append("".join(comp) + ("" if last else "/"))
    return re.compile("".join(out) + r"\Z")


class _Collector:
    """Accumulates items and errors across arguments; dedups by resolved path and guards symlink loops."""

    def __init__(self, exclude: Iterable[str] = ()) -> None:
        self.items: list[InputItem] = []
        self.errors: list[InputError] = []
        self._seen_files: set[str] = set()
        self._exclude = {os.path.realpath(p) for p in exclude}

    def _add(self, path: str, kind: Kind) -> None:
        key = os.path.realpath(path)
        if key in self._seen_files:
            return
        self._seen_files.add(key)
        self.items.append(InputItem(path=path, kind=kind))

    def error(self, path: str, code: str, message: str) -> None:
        self.errors.append(InputError(path=path, code=code, message=message))

    def _folder_error(self, folder: str, exc: OSError) -> None:
        reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or str(exc))
        self.error(
            folder, "unreadable", f"{folder}: cannot list the folder ({reason}). Check its permissions."
        )

    def bad_link(self, path: str, exc: OSError) -> None:
        """A symlink under a folder that leads nowhere: an error item when it is a loop or has a media name."""
        if exc.errno == errno.ELOOP:
            self.error(path, "unreadable", f"{path}: symbolic link loop (the links point at each other). "
                                           f"Remove or fix the link.")
        elif kind_from_extension(path) is not None:
            self.error(path, "not_found", f"{path}: broken symbolic link (its target does not exist). "
                                          f"Restore the target or remove the link.")

    def add_named_file(self, path: str) -> None:
        """A file the user named: anything that is not media is reported, never skipped."""
        try:
            kind = _classify(path)
        except OSError as exc:
            reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or exc)
            self.error(path, "unreadable", f"{path}: cannot be read ({reason}). Check its permissions.")
            return
        if kind is None:
            self.error(
                path,
                "not_media",
                f"{path}: not an image or video (unknown content and extension). "
                f"Supported: {', '.join(sorted(MEDIA_EXTS))}.",
            )
            return
        self._add(path, kind)

    def add_walked_file(self, path: str) -> bool:
        """A file found under a folder or by a pattern: non-media is skipped silently. True if media."""
        if self._exclude and os.path.realpath(path) in self._exclude and _sniff_or_none(path) is None:
            return False  # this scan's own report file (e.g. from the previous run), not an input
        hinted = kind_from_extension(path)
        try:
            kind = _classify(path)
        except OSError as exc:
            # Only complain about files that look like media; stray unreadable files are not our business.
            if hinted is not None:
                reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or exc)
                self.error(path, "unreadable", f"{path}: cannot be read ({reason}). Check its permissions.")
            return False
        if kind is None:
            return False
        self._add(path, kind)
        return True

    def _add_walk(self, folder: str, visited: set[str]) -> int:
        return sum(self.add_walked_file(p) for p in _walk_files(folder, visited, self._folder_error, self.bad_link))

    def add_folder(self, root: str) -> None:
        """Walk ``root`` recursively in sorted order; report it when it holds no media at all."""
        errors_before = len(self.errors)
        found = self._add_walk(root, visited=set())
        if found == 0 and len(self.errors) == errors_before:
            self.error(
                root,
                "no_media",
                f"{root}: folder holds no image or video files "
                f"(looked for {', '.join(sorted(MEDIA_EXTS))}, and by content).",
            )

    def add_argument(self, arg: str) -> None:
        if os.path.lexists(arg):
            try:
                st = os.stat(arg)
            except FileNotFoundError:
                self.error(arg, "not_found", f"{arg}: broken symbolic link (its target does not exist).")
                return
            except OSError as exc:
                self.error(arg, "unreadable", f"{arg}: cannot be accessed ({exc.strerror or exc}).")
                return
            if stat.S_ISDIR(st.st_mode):
                self.add_folder(arg)
            elif stat.S_ISREG(st.st_mode):
                self.add_named_file(arg)
            else:
                self.error(arg, "not_media", f"{arg}: not a regular file or folder.")
            return
        if glob.has_magic(arg):
            self.add_pattern(arg)
            return
        self.error(arg, "not_found", f"{arg}: no such file or folder (relative to {os.getcwd()}).")

    def add_pattern(self, pattern: str) -> None:
        """Files matching a glob pattern; ``**`` spans folders (walked safely, without glob's recursion)."""
        errors_before = len(self.errors)
        found = 0
        matched_any = False
        parts = pattern.replace(os.sep, "/").split("/")
        if "**" in parts:
            first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
            root = "/".join(parts[:first]) or ("/" if pattern.startswith("/") else "")
            regex = _translate_glob(parts[first:])
            for path in _walk_files(root or ".", set(), self._folder_error, self.bad_link):
                rel = os.path.relpath(path, root or ".").replace(os.sep, "/")
                if regex.match(rel):
                    matched_any = True
                    found += self.add_walked_file(os.path.join(root, rel) if root else rel)
        else:
            for match in sorted(glob.glob(pattern)):
                matched_any = True
                if os.path.isdir(match):
                    found += self._add_walk(match, set())
                elif os.path.isfile(match):
                    found += self.add_walked_file(match)
                elif os.path.islink(match):
                    try:
                        os.stat(match)
                    except OSError as exc:
                        self.bad_link(match, exc)
        if not matched_any:
            self.error(pattern, "not_found", f"{pattern}: the pattern matches no file or folder.")
        elif found == 0 and len(self.errors) == errors_before:
            self.error(pattern, "no_media", f"{pattern}: the pattern matches no image or video file.")


def _read_path_list(from_file: str) -> list[str]:
    """Paths from a list file (one per line) or from stdin when ``from_file`` is "-".

    Each line is stripped of surrounding whitespace; blank lines and lines starting with ``#`` are skipped
    (name a file that starts with "#" as ``./#name``).
    """
    if from_file == "-":
        text = sys.stdin.read()
    else:
        try:
            with open(from_file, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            raise MfclipError(
                f"Path list {from_file} does not exist. Pass a text file with one path per line."
            )
        except (OSError, UnicodeDecodeError) as exc:
            raise MfclipError(f"Path list {from_file} cannot be read as UTF-8 text: {exc}.") from exc
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def collect_inputs(
    paths: Iterable[str], from_file: str | None = None, exclude: Iterable[str] = ()
) -> tuple[list[InputItem], list[InputError]]:
    """Items for every media file named by ``paths`` (files, folders, glob patterns) and the list file.

    Folders are walked recursively in sorted name order; results keep the argument order and are
    deduplicated by resolved path (the first spelling wins). Files inside folders or matched by a pattern
    that are not media are skipped; a file named explicitly that is not media is an ``InputError``.
    Files found in folders or by patterns that are ``exclude``d (the scan's report targets) are skipped
    unless their content is media (then the caller refuses to overwrite them).
    Raises MfclipError when ``from_file`` itself cannot be read.
    """
    args = [os.fspath(p) for p in paths]
    if from_file is not None:
        args.extend(_read_path_list(from_file))
    collector = _Collector(exclude)
    for arg in args:
        collector.add_argument(arg)
    return collector.items, collector.errors


def shard(items: list[InputItem], k: int, n: int) -> list[InputItem]:
    """The ``k``-th (1-based) of ``n`` interleaved shares of the items sorted by path.

    Shares are disjoint, cover every item and do not depend on the input order.
    """
    if isinstance(k, bool) or isinstance(n, bool) or not isinstance(k, int) or not isinstance(n, int):
        raise TypeError(f"shard needs integers k and n, got k={k!r}, n={n!r}")
    if n < 1 or not 1 <= k <= n:
        raise ValueError(f"shard k/n must satisfy 1 <= k <= n, got {k}/{n} (e.g. --shard 2/4)")
    ordered = sorted(items, key=lambda it: (it.path, it.kind))
    return [it for i, it in enumerate(ordered) if i % n == k - 1]


# --------------------------------------------------------------------------------------------- images


def decode_image(path: str | os.PathLike, max_pixels: int = 100_000_000) -> np.ndarray:
    """RGB uint8 array (H, W, 3) of the image at ``path``, EXIF orientation applied.

    The pixel count from the header is checked against ``max_pixels`` before any pixel is decoded.
    Raises MediaError with code not_found, unreadable, empty_file, not_an_image, truncated, too_large
    or decode_failed.
    """
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise MediaError("not_found", f"{p}: file not found. Check the path.") from None
    except OSError as exc:
        raise MediaError("unreadable", f"{p}: cannot be accessed ({exc.strerror or exc}).") from None
    if stat.S_ISDIR(st.st_mode):
        raise MediaError("not_an_image", f"{p}: is a folder, not an image file.")
    if st.st_size == 0:
        raise MediaError("empty_file", f"{p}: the file is empty (0 bytes). Re-copy or re-download it.")
    try:
        fh = open(p, "rb")  # noqa: SIM115 - closed by the ``with`` below; only open()'s errors mean "unreadable"
    except PermissionError:
        raise MediaError("unreadable", f"{p}: permission denied. Check the file's permissions.") from None
    except OSError as exc:
        raise MediaError("unreadable", f"{p}: cannot be opened ({exc.strerror or exc}).") from None
    with fh:
        return _decode_stream(fh, p, max_pixels)


def decode_image_bytes(data: bytes, max_pixels: int = 100_000_000, name: str = "<bytes>") -> np.ndarray:
    """Like :func:`decode_image` for an in-memory encoded image; ``name`` is used in messages."""
    if not data:
        raise MediaError("empty_file", f"{name}: no bytes to decode.")
    return _decode_stream(io.BytesIO(data), name, max_pixels)


def _decode_stream(fh: BinaryIO, name: str, max_pixels: int) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    # Our own limit replaces Pillow's warning (suppressed here only); Pillow's hard error at twice its
    # MAX_IMAGE_PIXELS stays in force as a second net and is reported as too_large as well.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(fh)
        except Image.DecompressionBombError as exc:
            raise MediaError(
                "too_large",
                f"{name}: image header claims too many pixels to decode safely ({exc}). Downscale it first.",
            ) from None
        except UnidentifiedImageError:
            raise MediaError(
                "not_an_image",
                f"{name}: not a readable image (unknown or corrupt format). Check that the file is an "
                f"image ({', '.join(sorted(IMAGE_EXTS))}).",
            ) from None
        except Exception as exc:  # noqa: BLE001 - plugins raise many types on hostile headers
            raise MediaError("decode_failed", f"{name}: cannot read the image header ({exc}).") from None
        with im:
            width, height = im.size
            if width <= 0 or height <= 0:
                raise MediaError("decode_failed", f"{name}: image header claims size {width}x{height}.")
            if width * height > max_pixels:
                raise MediaError(
                    "too_large",
                    f"{name}: image is {width}x{height} = {width * height:,} pixels, above the limit of "
                    f"{max_pixels:,}. Downscale it first or raise the pixel limit.",
                )
            try:
                im.load()
            except (EOFError, OSError, SyntaxError) as exc:
                text = str(exc).lower()
                if isinstance(exc, EOFError) or "truncat" in text or "premature" in text:
                    raise MediaError(
                        "truncated",
                        f"{name}: image data is truncated (incomplete file). Re-copy or re-download it.",
                    ) from None
                raise MediaError("decode_failed", f"{name}: image data is corrupt ({exc}).") from None
            except Image.DecompressionBombError as exc:
                raise MediaError(
                    "too_large", f"{name}: image is too large to decode safely ({exc})."
                ) from None
            except MemoryError:
                raise MediaError("too_large", f"{name}: not enough memory to decode this image.") from None
            except Exception as exc:  # noqa: BLE001 - any other decoder failure is a per-file error
                raise MediaError("decode_failed", f"{name}: cannot decode the image ({exc}).") from None
            try:
                # in place: the copy exif_transpose makes otherwise, even of an upright image, cost a
                # third of the decode time of a large JPEG
                ImageOps.exif_transpose(im, in_place=True)
            except Exception:  # noqa: BLE001, S110 - a broken EXIF block should not cost the pixels
                pass  # keep the stored orientation
            try:
                return _to_rgb_array(im)
            except Exception as exc:  # noqa: BLE001 - exotic modes fail in convert() in many ways
                raise MediaError(
                    "decode_failed", f"{name}: unsupported pixel format {im.mode!r} ({exc})."
                ) from None


def _to_rgb_array(im) -> np.ndarray:
    """RGB uint8 (H, W, 3) from any Pillow mode: 16-bit scaled, alpha composited on mid-grey."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_grey_to_rgb(np.asarray(im), mode)
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("PA", "LA", "La", "RGBa") or (mode in ("L", "RGB") and "transparency" in im.info):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        rgba = np.asarray(im)
        return _composite_alpha(rgba[..., :3], rgba[..., 3])
    if im.mode != "RGB":
        im = im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return np.ascontiguousarray(np.asarray(im), dtype=np.uint8)


def _composite_alpha(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.uint32)[..., None]
    out = (rgb.astype(np.uint32) * a + ALPHA_BACKGROUND * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _high_depth_grey_to_rgb(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16-bit (and 32-bit int / float) greyscale to 8 bits and replicate to 3 channels."""
    if mode.startswith("I;16") or mode == "I":
        # 16-bit range to 8-bit: x * 255 / 65535 rounded (i.e. x / 257), values above 65535 clipped.
        wide = np.clip(arr.astype(np.int64), 0, 65535)
        grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)
    else:  # "F": floats in [0, 1] when they fit, else taken as 0..255
        f = np.nan_to_num(arr.astype(np.float64))
        scale = 255.0 if f.size and float(f.max()) <= 1.0 else 1.0
        grey = np.clip(np.rint(f * scale), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))


# --------------------------------------------------------------------------------------------- videos


def quiet_video_decoders() -> None:
    """Keep FFmpeg's and OpenCV's own log lines off stderr (a broken stream is reported in the item's
    ``video.warnings`` instead). Set before the first capture is opened; a value the user set wins."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


def _open_capture(path: str):
    quiet_video_decoders()
    import cv2

    if not os.path.exists(path):
        raise MediaError("not_found", f"{path}: file not found. Check the path.")
    if not os.access(path, os.R_OK):
        raise MediaError("unreadable", f"{path}: permission denied. Check the file's permissions.")
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        cap.release()
        raise MediaError(
            "video_unreadable",
            f"{path}: OpenCV cannot open this video (corrupt file or unsupported codec). "
            f"Try re-encoding it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4.",
        )
    return cap


def _container_fps(cap) -> float | None:
    import cv2

    fps = cap.get(cv2.CAP_PROP_FPS)
    if not math.isfinite(fps) or fps <= 0 or fps > 1000:
        return None
    return float(fps)


def video_info(path: str | os.PathLike) -> dict:
    """What the container claims: fps, frame count, size, codec and duration (for reports; not trusted)."""
    import cv2

    p = os.fspath(path)
    cap = _open_capture(p)
    try:
        fps = _container_fps(cap)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        frame_count = int(count) if math.isfinite(count) and count > 0 else None
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC))
        codec = "".join(chr((fourcc >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00 ") if fourcc else None
        return {
            "fps": fps,
            "frame_count": frame_count,
            "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            "codec": codec or None,
            "duration_s": (frame_count / fps) if (frame_count and fps) else None,
        }
    finally:
        cap.release()


def iter_video_frames(
    path: str | os.PathLike,
    fps: float | None = None,
    every: int | None = None,
    max_frames: int | None = None,
) -> Iterator[VideoFrame]:
    """RGB frames of a video, decoded in order, sampled by time (``fps``) or by count (``every``).

    ``fps=2`` keeps the first frame at or after each 0.5 s step; ``every=N`` keeps frames 0, N, 2N...;
    neither keeps every frame. ``max_frames`` caps the frames kept. Timestamps come from the decoder
    (CAP_PROP_POS_MSEC) and fall back to index / container fps (25 when unknown). The file is opened
    now (raising MediaError "not_found", "unreadable" or "video_unreadable"); iteration raises
    MediaError("no_frames") when the video yields no frame at all.
    """
    if fps is not None and every is not None:
        raise ValueError("pass either fps or every, not both")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if every is not None and (not isinstance(every, int) or every < 1):
        raise ValueError(f"every must be an integer >= 1, got {every!r}")
    if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
        raise ValueError(f"max_frames must be an integer >= 1, got {max_frames!r}")
    p = os.fspath(path)
    cap = _open_capture(p)
    return VideoFrames(cap, p, fps, every, max_frames)


class VideoFrames:
    """The frames :func:`iter_video_frames` yields; ``warnings`` (filled while iterating) says when the
    stream broke off before the end the container declares, or a sampled frame could not be decoded."""

    def __init__(self, cap, path: str, fps: float | None, every: int | None, max_frames: int | None):
        self.warnings: list[str] = []
        self._it = _frames(cap, path, fps, every, max_frames, self.warnings)

    def __iter__(self) -> Iterator[VideoFrame]:
        return self._it

    def __next__(self) -> VideoFrame:
        return next(self._it)


# A stream that ends this many frames (and this share) short of the container's frame count is reported:
# containers round their counts, so a frame or two missing is normal.
_SHORT_STREAM_FRAMES = 3
_SHORT_STREAM_SHARE = 0.02


def _frames(
    cap, path: str, fps: float | None, every: int | None, max_frames: int | None, warnings: list[str]
) -> Iterator[VideoFrame]:
    import cv2

    container_fps = _container_fps(cap) or DEFAULT_VIDEO_FPS
    count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    declared = int(count) if math.isfinite(count) and count > 0 else None
    failed = 0
    index = 0
    kept = 0
    last_bucket = -1
    last_t = -1.0
    use_pos = True  # trust decoder timestamps until they misbehave once
    try:
        while True:
            if not cap.grab():
                break
            t = index / container_fps
            if use_pos:
                pos = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                if math.isfinite(pos) and pos >= 0 and (pos > last_t or index == 0):
                    t = pos
                else:
                    use_pos = False
            last_t = t
            if fps is not None:
                bucket = math.floor(t * fps + 1e-6)
                keep = bucket > last_bucket
            elif every is not None:
                keep = index % every == 0
            else:
                keep = True
            if keep:
                ok, bgr = cap.retrieve()
                if ok and bgr is not None and bgr.size:
                    if fps is not None:
                        last_bucket = bucket
                    if bgr.ndim == 2:
                        rgb = cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
                    else:
                        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                    yield VideoFrame(index=index, time_s=t, image=rgb)
                    kept += 1
                    if max_frames is not None and kept >= max_frames:
                        return
                else:
                    failed += 1
            index += 1
        if failed:
            warnings.append(f"{failed} sampled frame(s) could not be decoded (corrupt data in the stream)")
        if declared is not None and declared - index >= max(_SHORT_STREAM_FRAMES, _SHORT_STREAM_SHARE * declared):
            warnings.append(
                f"decoding stopped at frame {index} of the {declared} the container declares (corrupt or "
                f"truncated stream): only the first {index / container_fps:.1f} s were scored"
            )
        if kept == 0:
            raise MediaError(
                "no_frames",
                f"{path}: the video has no decodable frame (empty or corrupt stream). Try re-encoding it.",
            )
    finally:
        cap.release()
