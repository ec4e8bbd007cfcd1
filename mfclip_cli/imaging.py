"""The one check of what every pixel stage takes: an RGB uint8 image array of shape (H, W, 3)."""

from __future__ import annotations

from typing import Any

import numpy as np


def describe_array(img: Any) -> str:
    """``"float32 (4, 4, 3)"`` for an array, else the type's name: what a check says it got."""
    return f"{img.dtype} {tuple(img.shape)}" if isinstance(img, np.ndarray) else type(img).__name__


def is_rgb_uint8(img: Any) -> bool:
    """Whether ``img`` is an RGB uint8 array of shape (H, W, 3)."""
    return isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


def check_rgb(img: Any) -> None:
    """Raise ValueError unless ``img`` is an RGB uint8 array of shape (H, W, 3)."""
    if not is_rgb_uint8(img):
        raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {describe_array(img)}")
