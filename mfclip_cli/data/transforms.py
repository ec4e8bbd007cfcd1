"""Pixel-level augmentations and robustness perturbations on RGB uint8 images (H, W, 3).

Training augmentations are applied to both classes alike (SPEC §5), so a model cannot separate real from
fake by file format (JPEG vs PNG) or native resolution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np


def check_rgb(img: np.ndarray) -> None:
    """Raise ValueError unless ``img`` is an RGB uint8 array of shape (H, W, 3)."""
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {desc}")


def _for_cv(img: np.ndarray) -> np.ndarray:
    """Checked, C-contiguous view of ``img`` (OpenCV rejects negative strides, e.g. from ``img[:, ::-1]``)."""
    check_rgb(img)
    return np.ascontiguousarray(img)


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """The image after JPEG encoding at ``quality`` (1-100) and decoding, RGB in and out."""
    bgr = cv2.cvtColor(_for_cv(img), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:  # pragma: no cover - OpenCV only fails on invalid input, which check_rgb rules out
        raise RuntimeError("OpenCV could not JPEG-encode the image")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """The image blurred by a Gaussian of standard deviation ``sigma`` pixels (kernel sized from sigma)."""
    return cv2.GaussianBlur(_for_cv(img), (0, 0), sigmaX=float(sigma), sigmaY=float(sigma),
                            borderType=cv2.BORDER_REFLECT_101)


def down_up(img: np.ndarray, scale: float) -> np.ndarray:
    """The image downscaled by ``scale`` (area interpolation) and resized back to its size (bilinear)."""
    img = _for_cv(img)
    h, w = img.shape[:2]
    small = (max(1, round(w * scale)), max(1, round(h * scale)))
    if small == (w, h):
        return img.copy()
    down = cv2.resize(img, small, interpolation=cv2.INTER_AREA)
    return cv2.resize(down, (w, h), interpolation=cv2.INTER_LINEAR)


def hflip(img: np.ndarray) -> np.ndarray:
    """The image mirrored left-right."""
    check_rgb(img)
    return np.ascontiguousarray(img[:, ::-1])


@dataclass(frozen=True)
class TrainAugment:
    """Random training augmentation: down-up resize, Gaussian blur, JPEG, horizontal flip (in that order).

    Each step is applied with its own probability. Defaults: flip 0.5; JPEG 0.5 at quality uniform in
    [60, 100] (half the images re-encoded, so format is no cue); blur 0.3 with sigma uniform in [0.1, 2.0]
    and down-up 0.3 with scale uniform in [0.5, 1.0] (milder rates, so most images keep their fine detail,
    which the noise branch reads). Call with a ``numpy.random.Generator``; the same generator state gives the
    same output, and every call draws the same number of values whatever is applied.
    """

    p_flip: float = 0.5
    jpeg: tuple[int, int] = (60, 100)
    p_jpeg: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    p_blur: float = 0.3
    downup: tuple[float, float] = (0.5, 1.0)
    p_downup: float = 0.3

    def __post_init__(self) -> None:
        for name in ("p_flip", "p_jpeg", "p_blur", "p_downup"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        lo, hi = self.jpeg
        if not 1 <= lo <= hi <= 100:
            raise ValueError(f"jpeg quality range must satisfy 1 <= low <= high <= 100, got {self.jpeg}")
        lo, hi = self.blur_sigma
        if not 0.0 < lo <= hi:
            raise ValueError(f"blur_sigma range must satisfy 0 < low <= high, got {self.blur_sigma}")
        lo, hi = self.downup
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"downup scale range must satisfy 0 < low <= high <= 1, got {self.downup}")

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """An augmented copy of ``img`` (same shape, uint8 RGB)."""
        check_rgb(img)
        u = rng.random(4)
        scale = rng.uniform(*self.downup)
        sigma = rng.uniform(*self.blur_sigma)
        quality = int(rng.integers(self.jpeg[0], self.jpeg[1] + 1))
        out = img
        if u[0] < self.p_downup:
            out = down_up(out, scale)
        if u[1] < self.p_blur:
            out = gaussian_blur(out, sigma)
        if u[2] < self.p_jpeg:
            out = jpeg_roundtrip(out, quality)
        if u[3] < self.p_flip:
            out = hflip(out)
        return out.copy() if out is img else out


AUGMENTATIONS = ("default", "strong")


def train_augment(name: str) -> TrainAugment:
    """A named training augmentation. "strong" works against this pool's source confounds: JPEG quality
    (q~75 sources vs q~93-95 ones, lossless PNG fakes) and sharpness (300 px sources are upsampled into the
    crop, 512 px ones downsampled) are re-drawn for most images, so neither tells the classes apart."""
    if name == "default":
        return TrainAugment()
    if name == "strong":
        return TrainAugment(p_jpeg=0.9, jpeg=(50, 90), p_downup=0.6, downup=(0.35, 1.0), p_blur=0.3)
    from ..errors import MfclipError

    raise MfclipError(f"unknown augmentation {name!r}; valid: {', '.join(AUGMENTATIONS)}")


def standardize(img: np.ndarray, size: int | None = 512, quality: int = 90) -> np.ndarray:
    """The image with its shorter side resized to ``size`` (aspect kept; None: no resize), then JPEG-encoded
    at ``quality``, for sets whose classes differ in resolution or file format."""
    img = _for_cv(img)
    out = img
    if size is not None:
        h, w = img.shape[:2]
        scale = size / min(h, w)
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        if new != (w, h):
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
            out = cv2.resize(img, new, interpolation=interp)
    return jpeg_roundtrip(out, quality)


Perturbation = Callable[[np.ndarray], np.ndarray]

# Fixed degradations for robustness rows in eval; each keeps the image's size.
PERTURBATIONS: dict[str, Perturbation] = {
    "jpeg90": lambda img: jpeg_roundtrip(img, 90),
    "jpeg70": lambda img: jpeg_roundtrip(img, 70),
    "jpeg50": lambda img: jpeg_roundtrip(img, 50),
    "blur1": lambda img: gaussian_blur(img, 1.0),
    "blur2": lambda img: gaussian_blur(img, 2.0),
    "down0.5": lambda img: down_up(img, 0.5),
    "reencode": lambda img: jpeg_roundtrip(img, 95),  # a social-media style re-save
}


def get_perturbation(name: str) -> Perturbation:
    """The perturbation called ``name``; ValueError listing the valid names otherwise."""
    try:
        return PERTURBATIONS[name]
    except KeyError:
        raise ValueError(f"unknown perturbation {name!r}; valid: {', '.join(PERTURBATIONS)}") from None
