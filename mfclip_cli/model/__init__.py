"""MFCLIP model core: config/presets, towers, noise branch, SPA, loss, checkpoints."""

from .build import build_model
from .checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from .config import ModelConfig, available_presets, load_preset
from .loss import MFCLIPLoss
from .mfclip import MFCLIP, ImageEncoder
from .preprocess import PreprocessConfig, prepare_batch, select_richest_patch

__all__ = [
    "MFCLIP", "ImageEncoder", "MFCLIPLoss", "ModelConfig", "PreprocessConfig", "available_presets",
    "build_model", "load_checkpoint", "load_preset", "prepare_batch", "read_checkpoint_meta",
    "save_checkpoint", "select_richest_patch",
]
