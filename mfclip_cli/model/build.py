"""One factory: ModelConfig -> MFCLIP."""

from __future__ import annotations

import torch

from .clip_loader import build_clip, init_image_tower
from .config import ModelConfig
from .lora import apply_lora
from .mfclip import MFCLIP


def make_tokenizer(cfg: ModelConfig, context_length: int):
    """The open_clip tokenizer for the config (bundled BPE vocab: works offline)."""
    import open_clip

    if cfg.clip_arch is not None:
        return open_clip.get_tokenizer(cfg.clip_arch)
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


def build_model(cfg: ModelConfig, *, load_pretrained: bool = True, online: bool | None = None,
                seed: int | None = None) -> MFCLIP:
    """Build MFCLIP from ``cfg``. ``load_pretrained=False`` skips CLIP/ImageNet weights (a checkpoint follows)."""
    if seed is not None:
        torch.manual_seed(seed)
    clip, embed_dim, ctx = build_clip(
        clip_arch=cfg.clip_arch,
        clip_config=cfg.clip_config,
        pretrained=cfg.pretrained,
        quick_gelu=cfg.quick_gelu,
        load_pretrained=load_pretrained,
        online=online,
    )
    if load_pretrained and cfg.image_init not in (None, "random"):
        init_image_tower(clip.visual, cfg.image_init)
    model = MFCLIP(cfg, clip, embed_dim, make_tokenizer(cfg, ctx))
    if cfg.lora is not None:
        apply_lora(model, cfg.lora)
    return model
