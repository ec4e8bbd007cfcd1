"""The crops the parity check and the variant comparison run on: given face crops or synthetic face-like ones."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import MfclipError
from ..imaging import describe_array, is_rgb_uint8
from ..model.preprocess import PreprocessConfig

SYNTHETIC_CROPS = 16


def synthetic_face_crops(n: int, size: int = 224, seed: int = 0) -> list[np.ndarray]:
    """``n`` deterministic face-like RGB uint8 crops: a shaded skin oval with eyes and mouth on a textured
    background, with sensor-like noise, so both branches see realistic value ranges and texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    crops = []
    for _ in range(n):
        img = rng.uniform(30, 210, 3) + rng.uniform(-60, 60, 3) * yy[..., None]
        img = img + 12 * np.sin(xx * rng.uniform(10, 40))[..., None]  # background texture
        cx, cy = 0.5 + rng.uniform(-0.05, 0.05), 0.52 + rng.uniform(-0.04, 0.04)
        ax, ay = rng.uniform(0.26, 0.34), rng.uniform(0.34, 0.42)
        r2 = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2
        skin = rng.uniform((150, 100, 80), (235, 190, 160))
        face = r2 <= 1
        img[face] = (skin * (1 - 0.3 * r2[..., None]))[face]
        for ex in (cx - 0.4 * ax, cx + 0.4 * ax):
            eye = ((xx - ex) / (0.18 * ax)) ** 2 + ((yy - cy + 0.2 * ay) / (0.08 * ay)) ** 2 <= 1
            img[eye] = rng.uniform(10, 70, 3)
        mouth = ((xx - cx) / (0.35 * ax)) ** 2 + ((yy - cy - 0.45 * ay) / (0.07 * ay)) ** 2 <= 1
        img[mouth] = skin * (0.6, 0.35, 0.35)
        img = img + rng.normal(0.0, rng.uniform(2, 8), img.shape)
        crops.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    return crops


def calibration_crops(images: list[np.ndarray] | None, pre: PreprocessConfig,
                       at_least: int) -> tuple[list[np.ndarray], str]:
    if images is None:
        return synthetic_face_crops(max(at_least, SYNTHETIC_CROPS), pre.size), "synthetic"
    if len(images) == 0:
        raise MfclipError("no calibration images were given; pass face crops or leave them out")
    want = (pre.size, pre.size, 3)
    for i, img in enumerate(images):
        if not is_rgb_uint8(img) or img.shape != want:
            raise MfclipError(
                f"calibration image {i} is {describe_array(img)}; export needs RGB uint8 face crops of shape {want} "
                f"(the checkpoint's input size, cropped with its crop policy)"
            )
    return list(images), "calibration"


def calibration_labels(labels: Sequence[int] | None, images: list[np.ndarray] | None) -> np.ndarray | None:
    if labels is None:
        return None
    if images is None or len(labels) != len(images):
        raise MfclipError("calibration labels need calibration images, one label (0 real, 1 fake) per image")
    y = np.asarray(labels)
    if not np.all((y == 0) | (y == 1)):
        raise MfclipError("calibration labels must be 0 (real) or 1 (fake)")
    return y.astype(np.int64)


def take(items: list, n: int) -> list:
    """The first ``n`` items, cycling when there are fewer."""
    return [items[i % len(items)] for i in range(n)]
