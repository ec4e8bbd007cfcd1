"""Pixel-level augmentations and robustness perturbations on RGB uint8 images (H, W, 3).

Training augmentations are applied to both classes alike (SPEC §5), so a model cannot separate real from
fake by file format (JPEG vs PNG) or native resolution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from ..imaging import check_rgb


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


AUGMENTATIONS = ("default", "strong", "light")


def train_augment(name: str) -> TrainAugment:
    """A named training augmentation. "light": flip and some blur only (for use with the parity pipeline).
    "strong" works against this pool's source confounds: JPEG quality
    (q~75 sources vs q~93-95 ones, lossless PNG fakes) and sharpness (300 px sources are upsampled into the
    crop, 512 px ones downsampled) are re-drawn for most images, so neither tells the classes apart."""
    if name == "default":
        return TrainAugment()
    if name == "strong":
        return TrainAugment(p_jpeg=0.9, jpeg=(50, 90), p_downup=0.6, downup=(0.35, 1.0), p_blur=0.3)
    if name == "light":  # beside the parity pipeline, which already re-draws size and JPEG history
        return TrainAugment(p_jpeg=0.0, p_downup=0.0, p_blur=0.2)
    from ..errors import MfclipError

    raise MfclipError(f"unknown augmentation {name!r}; valid: {', '.join(AUGMENTATIONS)}")


def _retouch(img: np.ndarray, step: tuple[str, float, float] | None) -> np.ndarray:
    """``img`` unsharp-masked (("sharpen", sigma, amount)), smoothed by an edge-preserving bilateral filter
    (("smooth", colour sigma, space sigma)), or as it is (None)."""
    if step is None:
        return img
    kind, a, b = step
    if kind == "smooth":
        return cv2.bilateralFilter(img, 0, a, b)
    soft = gaussian_blur(img, a).astype(np.float32)
    return np.clip(np.rint(img.astype(np.float32) + (img.astype(np.float32) - soft) * b), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class ParityChain:
    """One random resize -> JPEG history per training image, drawn alike for real and fake files.

    Sources differ in how large their faces are in pixels and how their files were compressed, and a
    model learns those differences instead of generation traces. Before its face is cut, every image is
    either put through exactly the external suite's protocol (``p_suite``: resized to 256x256 with
    INTER_AREA, JPEG q90) or resized so that its face box's longer side is a size drawn log-uniformly from
    ``face_px`` (never enlarged: upsampling adds no detail) and, with ``p_jpeg``, JPEG re-encoded at a
    quality drawn from ``jpeg``; before either, ``p_grey`` of the images lose their colour. With ``p_sharpen``
    (0 in "on", 0.3 in "sharp" and "retouch"), the resized image is unsharp-masked before its JPEG step, as
    phone pipelines and upscalers do, and with ``p_smooth`` (0.2 in "retouch") it is smoothed by an
    edge-preserving filter instead, as denoisers, beauty filters and restoration networks do: a sharpened or
    airbrushed look is then as common among reals as among fakes. Every call of one chain draws the same
    number of values whatever is applied.
    """

    p_suite: float = 0.25
    suite_side: int = 256
    suite_quality: int = 90
    face_px: tuple[float, float] = (48.0, 256.0)
    p_jpeg: float = 0.85
    jpeg: tuple[int, int] = (60, 98)
    # black-and-white photos are unevenly spread over the pool's sources; greying a share of every class
    # leaves colour no say in the verdict
    p_grey: float = 0.08
    p_sharpen: float = 0.0
    sharpen_sigma: tuple[float, float] = (0.5, 1.5)
    sharpen_amount: tuple[float, float] = (0.3, 1.5)
    p_smooth: float = 0.0
    smooth_colour: tuple[float, float] = (15.0, 50.0)  # bilateral filter's colour sigma (0-255 scale)
    smooth_space: tuple[float, float] = (1.5, 4.0)  # and its space sigma, pixels of the resized image

    def __post_init__(self) -> None:
        if self.p_sharpen + self.p_smooth > 1.0:
            raise ValueError(f"p_sharpen + p_smooth must be at most 1, got {self.p_sharpen + self.p_smooth}")
        for name in ("p_suite", "p_jpeg", "p_grey", "p_sharpen", "p_smooth"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        lo, hi = self.face_px
        if not 8 <= lo <= hi:
            raise ValueError(f"face_px range must satisfy 8 <= low <= high, got {self.face_px}")
        lo, hi = self.jpeg
        if not 1 <= lo <= hi <= 100:
            raise ValueError(f"jpeg quality range must satisfy 1 <= low <= high <= 100, got {self.jpeg}")

    def __call__(self, img: np.ndarray, face_side: float, rng: np.random.Generator
                 ) -> tuple[np.ndarray, tuple[float, float]]:
        """(new image, (x scale, y scale)) for an RGB image whose face box's longer side is ``face_side`` px;
        map the face's coordinates with the scales (pixel centres: ``(x + 0.5) * s - 0.5``)."""
        img = _for_cv(img)
        u = rng.random(3)
        if u[2] < self.p_grey:
            img = np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
        target = float(np.exp(rng.uniform(np.log(self.face_px[0]), np.log(self.face_px[1]))))
        quality = int(rng.integers(self.jpeg[0], self.jpeg[1] + 1))
        step = None
        if self.p_sharpen + self.p_smooth > 0:  # drawn only by retouching chains, so "on" keeps its draws
            v = rng.random(3)
            if v[0] < self.p_sharpen:
                step = ("sharpen", self.sharpen_sigma[0] + (self.sharpen_sigma[1] - self.sharpen_sigma[0]) * v[1],
                        self.sharpen_amount[0] + (self.sharpen_amount[1] - self.sharpen_amount[0]) * v[2])
            elif v[0] < self.p_sharpen + self.p_smooth:
                step = ("smooth", self.smooth_colour[0] + (self.smooth_colour[1] - self.smooth_colour[0]) * v[1],
                        self.smooth_space[0] + (self.smooth_space[1] - self.smooth_space[0]) * v[2])
        h, w = img.shape[:2]
        if u[0] < self.p_suite:
            side = self.suite_side
            out = _retouch(cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA), step)
            return jpeg_roundtrip(out, self.suite_quality), (side / w, side / h)
        scale = min(1.0, target / max(face_side, 1.0))
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        out = img if new == (w, h) else cv2.resize(img, new, interpolation=cv2.INTER_AREA)
        out = _retouch(out, step)
        if u[1] < self.p_jpeg:
            out = jpeg_roundtrip(out, quality)
        return (out.copy() if out is img else out), (new[0] / w, new[1] / h)


@dataclass(frozen=True)
class SelfBlend:
    """A self-blended pseudo-fake from a real face crop (after Shiohara & Yamasaki, CVPR 2022): the inner
    face of a slightly altered copy (colour, sharpness, a small shift and scale) pasted back onto the crop
    through a soft mask, leaving the seams and statistic mismatches a face swap or edit leaves.

    ``landmarks`` are the five template points in the crop (eyes, nose, mouth corners), where alignment puts
    every face. Every call of one mode (self-blend or swap) draws the same number of values.
    """

    landmarks: tuple[tuple[float, float], ...]
    hull_scale: tuple[float, float] = (1.3, 2.1)
    shift: float = 0.03  # of the crop side
    zoom: tuple[float, float] = (0.95, 1.05)
    mask_sigma: tuple[float, float] = (2.0, 9.0)
    alpha: tuple[float, float] = (0.5, 1.0)
    p_sharpen: float = 0.5  # share of altered copies sharpened rather than softened (0: "sbi-soft")

    def __call__(self, crop: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None = None) -> np.ndarray:
        """The blended crop. ``donor``: another real face's aligned crop (same size) whose inner face is pasted
        instead of the crop's own, after a resolution drop to a swapper's working size: a simulated face swap
        (identity, skin tone, sharpness and JPEG history differ across the seam)."""
        crop = _for_cv(crop)
        size = crop.shape[0]
        v = rng.random(12)
        # the altered copy: colour gains and offset, blur or sharpen, a small similarity warp
        src = crop if donor is None else _for_cv(donor)
        if donor is not None:
            # swappers synthesise the face at 128-256 px and paste it back resized; the drop is drawn so the
            # pasted face ends between 40 % and 100 % of the crop's resolution
            drop = 0.4 + 0.6 * rng.random()
            small = max(8, round(size * drop))
            src = cv2.resize(cv2.resize(src, (small, small), interpolation=cv2.INTER_AREA), (size, size),
                             interpolation=cv2.INTER_LINEAR)
        gains = 1.0 + (v[0:3] - 0.5) * 0.16
        offset = (v[3] - 0.5) * 20.0
        src = np.clip(src.astype(np.float32) * gains + offset, 0, 255)
        sigma = 0.4 + 1.2 * v[4]
        soft = cv2.GaussianBlur(src, (0, 0), sigma)
        sharpen = v[5] >= 1.0 - self.p_sharpen
        src = np.clip(src + (src - soft) * (0.5 + v[6]), 0, 255) if sharpen else soft
        z = self.zoom[0] + (self.zoom[1] - self.zoom[0]) * v[7]
        dx, dy = (v[8] - 0.5) * 2 * self.shift * size, (v[9] - 0.5) * 2 * self.shift * size
        m = cv2.getRotationMatrix2D((size / 2, size / 2), 0.0, z)
        m[:, 2] += (dx, dy)
        src = cv2.warpAffine(src, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        # the mask: the landmarks' convex hull grown about its centre, softened (a swap keeps to the inner face)
        pts = np.asarray(self.landmarks, np.float32)
        centre = pts.mean(axis=0)
        lo, hi = self.hull_scale if donor is None else (1.15, 1.6)
        grow = lo + (hi - lo) * v[10]
        pts = centre + (pts - centre) * np.array([grow, grow * 1.15], np.float32)
        mask = np.zeros((size, size), np.float32)
        cv2.fillConvexPoly(mask, cv2.convexHull(pts.astype(np.int32)), 1.0)
        s_lo, s_hi = self.mask_sigma if donor is None else (4.0, 10.0)
        mask = cv2.GaussianBlur(mask, (0, 0), s_lo + (s_hi - s_lo) * v[11])
        if donor is not None:
            # swap tools match the pasted face's colour to the target's, mostly: per-channel mean and spread
            # inside the mask moved towards the crop's by a drawn share
            w = mask[..., None] / max(float(mask.sum()), 1.0)
            base = crop.astype(np.float32)
            mu_s, mu_t = (src * w).sum((0, 1)), (base * w).sum((0, 1))
            sd_s = np.sqrt(((src - mu_s) ** 2 * w).sum((0, 1))) + 1e-3
            sd_t = np.sqrt(((base - mu_t) ** 2 * w).sum((0, 1))) + 1e-3
            share = rng.uniform(0.5, 1.0)
            matched = (src - mu_s) / sd_s * sd_t + mu_t
            src = np.clip(src + share * (matched - src), 0, 255)
        # a swap replaces the face outright; a self-blend may be partial
        mask *= rng.uniform(*self.alpha) if donor is None else rng.uniform(0.85, 1.0)
        out = crop.astype(np.float32) * (1 - mask[..., None]) + src * mask[..., None]
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


PARITY_CHAINS = ("off", "on", "sharp", "retouch")


def parity_chain(name: str) -> ParityChain | None:
    """The named parity pipeline: "off" (crops as cut from the files), "on" (:class:`ParityChain`), "sharp"
    ("on" with 30 % of the images unsharp-masked, reals and fakes alike) or "retouch" ("sharp" with a further
    20 % smoothed by an edge-preserving filter)."""
    if name == "off":
        return None
    if name == "on":
        return ParityChain()
    if name == "sharp":
        return ParityChain(p_sharpen=0.3)
    if name == "retouch":
        return ParityChain(p_sharpen=0.3, p_smooth=0.2)
    from ..errors import MfclipError

    raise MfclipError(f"unknown parity pipeline {name!r}; valid: {', '.join(PARITY_CHAINS)}")


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
