"""MFCLIP model core: config/presets, towers, noise branch, SPA, loss, checkpoints.

Names are imported on first use (PEP 562), so reading the preset registry (``model.config``) does not
import torch: the CLI lists the presets in its help without paying for the model code.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "build_model": ".build",
    "load_checkpoint": ".checkpoint", "read_checkpoint_meta": ".checkpoint", "save_checkpoint": ".checkpoint",
    "ModelConfig": ".config", "available_presets": ".config", "load_preset": ".config",
    "MFCLIPLoss": ".loss",
    "MFCLIP": ".mfclip", "ImageEncoder": ".mfclip",
    "PreprocessConfig": ".preprocess", "prepare_batch": ".preprocess", "select_richest_patch": ".preprocess",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
