"""Before the first step: the crop policy and model config a run uses, its protocol splits, frozen towers."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..data.layouts import read_dataset
from ..data.protocols import ProtocolSplit, make_protocol
from ..decision import override_crop
from ..errors import MfclipError
from ..faces.types import CropPolicy
from ..model import load_preset
from ..model.config import ModelConfig
from ..model.mfclip import MFCLIP
from .options import TrainOptions


# --- setup ---------------------------------------------------------------------------------------------------
def crop_policy_for(opts: TrainOptions, size: int) -> CropPolicy:
    """The crop policy training saves: the default policy for ``opts.crop`` < ``--crop-margin``."""
    if opts.crop == "none":
        return CropPolicy.none(size)
    return override_crop(CropPolicy(detector=opts.crop, size=size), margin=opts.crop_margin)


def model_config_for(opts: TrainOptions) -> ModelConfig:
    """Preset < explicit overrides (CLI flags)."""
    return load_preset(opts.preset).with_overrides(**opts.model_overrides)


def resolve_splits(opts: TrainOptions) -> list[ProtocolSplit]:
    records = read_dataset(opts.data, opts.layout)
    kw: dict[str, Any] = {"seed": opts.seed}
    if opts.protocol in ("in-domain", "cross-generator", "cross-forgery"):
        kw.update(val=opts.val_frac, test=opts.test_frac)
    if opts.protocol == "cross-generator":
        kw.update(test_generators=list(opts.test_generators) if opts.test_generators else None,
                  train_generators=list(opts.train_generators) if opts.train_generators else None)
    elif opts.protocol == "cross-forgery":
        if not opts.train_kind:
            raise MfclipError("--protocol cross-forgery needs --train-kind KIND")
        kw["train_kind"] = opts.train_kind
    elif opts.protocol == "cross-dataset":
        if not opts.test_data:
            raise MfclipError("--protocol cross-dataset needs --test-data ROOT2")
        kw.update(test_records=read_dataset(opts.test_data, "auto"), val=opts.val_frac)
    elif opts.protocol == "leave-source-out":
        kw.update(val=opts.val_frac)
    return make_protocol(opts.protocol, records, **kw)




_IMAGE_HEAD_NAMES = ("head", "proj")


def freeze_towers(model: MFCLIP, opts: TrainOptions) -> None:
    """--freeze-image freezes the image backbone (its projection to D stays trainable); --freeze-text the FLE."""
    if opts.freeze_image and model.visual is not None:
        for name, p in model.visual.named_parameters():
            if not name.split(".")[0] in _IMAGE_HEAD_NAMES:
                p.requires_grad_(False)
    if opts.freeze_text and model.text is not None:
        for p in model.text.parameters():
            p.requires_grad_(False)


def set_train_mode(model: MFCLIP, opts: TrainOptions) -> None:
    """train() everywhere, except a frozen image backbone, whose BatchNorm statistics must not drift."""
    model.train()
    if opts.freeze_image and model.visual is not None:
        trunk = getattr(model.visual, "trunk", None)
        (trunk if trunk is not None else model.visual).eval()


def unwrap(model: torch.nn.Module) -> MFCLIP:
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


def process_rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))
