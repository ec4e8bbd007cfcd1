"""Safe image decoding: any failure is a MediaError with a short code; alpha composited on grey, high bit depths reduced."""

from __future__ import annotations

import io
import os
import stat
import warnings
from typing import BinaryIO

import numpy as np

from mfclip_cli.errors import MediaError

from .sniff import IMAGE_EXTS

# Composite colour for transparent pixels: mid-grey is neutral for a detector (close to the mean of
# the usual normalisations) and, unlike dropping alpha, never exposes whatever RGB hides under alpha=0.
ALPHA_BACKGROUND = 128


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
