"""Where shipped weights and caches live. Resolved on call, never at import."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CHECKPOINT_NAME = "mfclip_default.safetensors"
RETINAFACE_NAME = "retinaface_mnet025.onnx"


def weights_dir() -> Path:
    """The folder of shipped weights: $MFCLIP_WEIGHTS, else the package's copy, else the repo's weights/."""
    env = os.environ.get("MFCLIP_WEIGHTS")
    if env:
        return Path(env)
    pkg = Path(__file__).resolve().parent / "weights"
    if pkg.is_dir():
        return pkg
    return Path(__file__).resolve().parent.parent / "weights"


def default_checkpoint() -> Path:
    """Path of the shipped default MFCLIP checkpoint (may not exist in a bare source tree)."""
    return weights_dir() / DEFAULT_CHECKPOINT_NAME


def retinaface_model() -> Path:
    """Path of the shipped RetinaFace-MobileNet0.25 ONNX detector."""
    return weights_dir() / RETINAFACE_NAME


def cache_dir() -> Path:
    """Cache root for face crops and similar derived data ($MFCLIP_CACHE or ~/.cache/mfclip)."""
    env = os.environ.get("MFCLIP_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mfclip"
