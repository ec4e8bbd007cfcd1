"""Checkpoints: one safetensors file, tensors + JSON metadata under key 'mfclip'. Never a pickle."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import CheckpointError
from ..fsutil import atomic_write_bytes, sha256_file
from .build import build_model
from .config import ModelConfig
from .lora import has_lora, merge_lora
from .metadata import parse_meta_json, validate_checkpoint_meta
from .mfclip import MFCLIP

FORMAT_VERSION = 1
META_KEY = "mfclip"
_TEXT_PREFIX = "text."


def save_checkpoint(path: str | Path, model: MFCLIP, *, meta: dict[str, Any] | None = None,
                    half: bool = False, include_text: bool = True, merge: bool = True) -> Path:
    """Write ``model`` and its metadata atomically; returns the path.

    ``meta`` may carry crop policy, taxonomy, threshold and training info (DESIGN.md). LoRA adapters are
    merged first unless ``merge=False`` (training checkpoints keep them so a run can resume).
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
    full_meta = dict(meta or {})
    full_meta.update(format_version=FORMAT_VERSION, model=cfg.to_dict(), package_version=__version__,
                     dtype="float16" if half else "float32")
    data = save(state, metadata={META_KEY: json.dumps(full_meta)})
    path = Path(path)
    atomic_write_bytes(path, data)
    return path


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The checkpoint's JSON metadata; refuses anything that is not a safetensors file."""
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
    return validate_checkpoint_meta(meta, str(path))


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu",
                    expect: ModelConfig | None = None) -> tuple[MFCLIP, dict[str, Any]]:
    """Rebuild the model stored in ``path``; returns (model in eval mode, metadata)."""
    from safetensors.torch import load_file

    meta = read_checkpoint_meta(path)
    try:
        cfg = ModelConfig.from_dict(meta["model"])
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed architecture record is the file's fault
        raise CheckpointError(
            f"{path}: its architecture record ('model') is malformed ({type(exc).__name__}: {exc}). "
            f"Use a checkpoint written by `mfclip train`."
        ) from None
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
    meta["sha256"] = sha256_file(path)
    meta["path"] = str(path)
    return model, meta


def _arch_key(cfg: ModelConfig) -> str:
    return json.dumps([cfg.clip_arch, cfg.clip_config, cfg.noise.__dict__, cfg.branches, cfg.fusion, cfg.spa],
                      sort_keys=True, default=str)


def _describe(cfg: ModelConfig) -> str:
    tower = cfg.clip_arch or (cfg.clip_config or {}).get("vision_cfg", {}).get("timm_model_name", "inline ViT")
    return f"{tower}, branches={cfg.branches}, fusion={cfg.fusion}, spa={cfg.spa}"
