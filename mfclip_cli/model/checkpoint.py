"""Checkpoints: one safetensors file, tensors + JSON metadata under key 'mfclip'. Never a pickle."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import torch

from .. import __version__
from ..errors import CheckpointError
from ..fsutil import atomic_write_bytes, sha256_file
from .build import build_model
from .config import ModelConfig
from .lora import has_lora, merge_lora
from .metadata import FORMAT_VERSION, CheckpointMeta, Origin, parse_meta_json
from .mfclip import MFCLIP

__all__ = ["FORMAT_VERSION", "META_KEY", "load_checkpoint", "read_checkpoint_meta", "save_checkpoint"]
META_KEY = "mfclip"
_TEXT_PREFIX = "text."


def save_checkpoint(path: str | Path, model: MFCLIP, *, meta: CheckpointMeta | None = None,
                    half: bool = False, include_text: bool = True, merge: bool = True) -> Path:
    """Write ``model`` and its metadata atomically; returns the path.

    ``meta`` carries the threshold, input spec, taxonomy and training record; its architecture, format,
    package version and dtype are those of what is written. LoRA adapters are merged first unless
    ``merge=False`` (training checkpoints keep them so a run can resume).
    """
    from safetensors.torch import save

    cfg = model.cfg
    if merge and has_lora(model):
        model = copy.deepcopy(model)  # merge a copy: the caller may still be training the adapters
        merge_lora(model)
        cfg = replace(cfg, lora=None)
        model.cfg = cfg
    if not include_text:
        cfg = replace(cfg, include_text=False)
    state = {}
    for k, v in model.state_dict().items():
        if not include_text and k.startswith(_TEXT_PREFIX):
            continue
        t = v.detach().cpu().contiguous()
        if half and t.is_floating_point():
            t = t.half()
        state[k] = t
    full_meta = replace(meta or CheckpointMeta(), format_version=FORMAT_VERSION, model=cfg,
                        package_version=__version__, dtype="float16" if half else "float32")
    data = save(state, metadata={META_KEY: json.dumps(full_meta.to_json())})
    path = Path(path)
    atomic_write_bytes(path, data)
    return path


def read_checkpoint_meta(path: str | Path) -> CheckpointMeta:
    """The checkpoint's metadata record; refuses anything that is not a safetensors file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; give the path of an mfclip .safetensors "
                              f"checkpoint (e.g. a run's best.safetensors, or weights/mfclip_default.safetensors)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a safetensors checkpoint ({type(exc).__name__}). mfclip never unpickles "
            f"files; convert third-party weights to .safetensors first."
        ) from exc
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file but not an mfclip checkpoint (no '{META_KEY}' metadata)")
    meta = parse_meta_json(raw, str(path))
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version}, this mfclip ({__version__}) reads format {FORMAT_VERSION}"
        )
    return CheckpointMeta.from_json(meta, str(path))


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu",
                    expect: ModelConfig | None = None) -> tuple[MFCLIP, CheckpointMeta]:
    """Rebuild the model stored in ``path``; returns (model in eval mode, metadata with the file's sha256)."""
    from safetensors.torch import load_file

    meta = read_checkpoint_meta(path)
    cfg = meta.model
    assert cfg is not None  # from_json always reads the architecture of a checkpoint
    if expect is not None and _arch_key(expect) != _arch_key(cfg):
        raise CheckpointError(
            f"{path} holds a '{cfg.preset}' model ({_describe(cfg)}) but '{expect.preset}' "
            f"({_describe(expect)}) was asked for"
        )
    model = build_model(cfg, load_pretrained=False)
    state = load_file(str(path), device="cpu")
    own = model.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensor shapes that do not fit the declared config
        raise CheckpointError(
            f"{path} does not match its declared architecture ({_describe(cfg)}): {str(exc)[:300]}"
        ) from exc
    if not cfg.include_text:
        missing = [k for k in missing if not k.startswith(_TEXT_PREFIX)]
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match its declared architecture ({_describe(cfg)}): "
            f"missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}"
        )
    model.to(device).eval()
    return model, replace(meta, origin=Origin(str(path), sha256_file(path), cfg.preset))


def _arch_key(cfg: ModelConfig) -> str:
    return json.dumps([cfg.clip_arch, cfg.clip_config, cfg.noise.__dict__, cfg.branches, cfg.fusion, cfg.spa],
                      sort_keys=True, default=str)


def _describe(cfg: ModelConfig) -> str:
    tower = cfg.clip_arch or (cfg.clip_config or {}).get("vision_cfg", {}).get("timm_model_name", "inline ViT")
    return f"{tower}, branches={cfg.branches}, fusion={cfg.fusion}, spa={cfg.spa}"
