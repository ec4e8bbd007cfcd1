"""Model inputs from face crops: CLIP-normalised image and the richest-texture noise patch (SPEC §3.1-2).

Everything here is numpy so the data pipeline (loader workers), scan and the ONNX runtime share it
without torch; the model never computes the GLCM in ``forward``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MASKS = ("none", "ellipse")
COLOUR_NORMS = ("fixed", "per-crop")
PER_CROP_STD = 0.5  # per-crop standardised channels get this spread, that of a natural image under mean = std = 0.5
ELLIPSE_AXES = (0.36, 0.46)  # semi-axes as fractions of the crop side (x, y)


@dataclass(frozen=True)
class PreprocessConfig:
    """How a face crop becomes model input. Travels inside every checkpoint."""

    size: int = 224
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    grid: int = 2  # noise branch: g x g patches, richest one chosen
    # "ellipse": pixels outside a centred face ellipse are zeroed for every input, so the framing (black
    # borders of tight source crops, background) is the same for every source and cannot be learned.
    mask: str = "none"
    # "fixed": every channel shifted and scaled by ``mean`` / ``std``. "per-crop": each channel of each crop
    # standardised over the kept (in-mask) pixels, so global brightness, contrast and colour cast, which differ
    # between photo sources and point different ways in different data sets, carry no signal.
    colour_norm: str = "fixed"

    def __post_init__(self) -> None:
        if self.mask not in MASKS:
            raise ValueError(f"unknown preprocessing mask {self.mask!r}; valid: {', '.join(MASKS)}")
        if self.colour_norm not in COLOUR_NORMS:
            raise ValueError(f"unknown colour normalisation {self.colour_norm!r}; valid: {', '.join(COLOUR_NORMS)}")

    @property
    def patch_size(self) -> int:
        return self.size // self.grid

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> PreprocessConfig:
        return PreprocessConfig(
            size=int(d["size"]), mean=tuple(d["mean"]), std=tuple(d["std"]), grid=int(d["grid"]),
            mask=str(d.get("mask", "none")), colour_norm=str(d.get("colour_norm", "fixed")),
        )


def grey_levels(crop: np.ndarray) -> np.ndarray:
    """uint8 grey image (256 levels) of an RGB uint8 crop: 0.2989 R + 0.587 G + 0.114 B."""
    rgb = crop.astype(np.float32)
    grey = 0.2989 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def patch_homogeneity(grey: np.ndarray, grid: int) -> np.ndarray:
    """GLCM homogeneity (distance 1, angle 0, symmetric, normalised) of each patch, row-major, shape (g*g,).

    For a symmetric normalised co-occurrence matrix, sum_ij P(i,j)/(1+(i-j)^2) equals the mean of
    1/(1+(a-b)^2) over horizontal neighbour pairs (a, b): no 256x256 matrix is needed.
    """
    h, w = grey.shape
    ph, pw = h // grid, w // grid
    if ph < 1 or pw < 2:
        raise ValueError(f"crop {h}x{w} too small for a {grid}x{grid} grid")
    g = grey[: ph * grid, : pw * grid].astype(np.int32)
    patches = g.reshape(grid, ph, grid, pw).transpose(0, 2, 1, 3).reshape(grid * grid, ph, pw)
    diff = patches[:, :, 1:] - patches[:, :, :-1]
    return (1.0 / (1.0 + diff.astype(np.float64) ** 2)).mean(axis=(1, 2))


def select_richest_patch(crop: np.ndarray, grid: int = 2) -> int:
    """Index (row-major) of the least homogeneous patch of an RGB uint8 crop: argmin GLCM homogeneity."""
    return int(np.argmin(patch_homogeneity(grey_levels(crop), grid)))


def patch_box(index: int, size: int, grid: int) -> tuple[int, int, int, int]:
    """[x1, y1, x2, y2) in crop pixels of the ``index``-th (row-major) patch of a g x g grid over a
    ``size`` square crop: the region the noise branch reads when that patch is the richest."""
    ph = pw = size // grid
    r, c = divmod(index, grid)
    return c * pw, r * ph, (c + 1) * pw, (r + 1) * ph


@lru_cache(maxsize=8)
def face_mask(size: int, kind: str) -> np.ndarray | None:
    """Boolean (size, size) mask of the pixels kept, or None for no mask."""
    if kind == "none":
        return None
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    rx, ry = ELLIPSE_AXES
    return ((xx - size / 2) / (rx * size)) ** 2 + ((yy - size / 2) / (ry * size)) ** 2 <= 1.0


def prepare_batch(crops: list[np.ndarray], cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Stack RGB uint8 crops (each cfg.size square) into (image, noise) float32 NCHW arrays.

    image: CLIP-normalised, (B, 3, size, size). noise: richest patch in [0, 1], (B, 3, size/g, size/g).
    """
    image, noise, _ = prepare_batch_with_patches(crops, cfg)
    return image, noise


def prepare_batch_with_patches(crops: list[np.ndarray], cfg: PreprocessConfig
                               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`prepare_batch` plus the index (row-major, see :func:`patch_box`) of the patch each noise
    input was cut from, shape (B,) int: the one place that choice is made, so explanations outline
    exactly the patch the noise branch read.

    Written straight into the output arrays (no per-crop temporaries): scan calls this for every face.
    """
    if not crops:
        raise ValueError("prepare_batch needs at least one crop")
    size, grid = cfg.size, cfg.grid
    ph = pw = size // grid
    mean = np.asarray(cfg.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(cfg.std, np.float32).reshape(3, 1, 1)
    images = np.empty((len(crops), 3, size, size), np.float32)
    noises = np.empty((len(crops), 3, ph, pw), np.float32)
    patches = np.empty(len(crops), np.int64)
    keep = face_mask(size, cfg.mask)
    # full HxWx3 0/1 mask: a contiguous multiply, ~20x faster than broadcasting over the channel axis
    keep01 = None if keep is None else np.repeat(keep.astype(np.uint8)[..., None], 3, axis=2)
    for i, crop in enumerate(crops):
        if crop.shape != (size, size, 3) or crop.dtype != np.uint8:
            raise ValueError(f"crop must be uint8 {size}x{size}x3, got {crop.dtype} {tuple(crop.shape)}")
        if keep01 is not None:
            crop = crop * keep01  # zero outside the ellipse
        chw = crop.transpose(2, 0, 1)
        out = images[i]
        np.divide(chw, np.float32(255.0), out=out)  # x in [0, 1]
        patches[i] = idx = select_richest_patch(crop, grid)
        x1, y1, x2, y2 = patch_box(idx, size, grid)
        noises[i] = out[:, y1:y2, x1:x2]
        if cfg.colour_norm == "per-crop":
            _standardise_channels(out, keep)
        else:
            out -= mean
            out /= std
    return images, noises, patches


def _standardise_channels(chw: np.ndarray, keep: np.ndarray | None) -> None:
    """In place: each channel minus its mean over the kept pixels, times PER_CROP_STD / its std there;
    pixels outside the mask end at 0."""
    flat = chw.reshape(3, -1)
    sel = flat if keep is None else flat[:, keep.ravel()]
    mu = sel.mean(axis=1, keepdims=True)
    sd = sel.std(axis=1, keepdims=True)
    flat -= mu
    flat *= PER_CROP_STD / np.maximum(sd, 1e-3)
    if keep is not None:
        flat[:, ~keep.ravel()] = 0.0
