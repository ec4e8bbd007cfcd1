"""LoRA adapters (peft) on the open_clip towers, and merging them back for inference/export."""

from __future__ import annotations

from torch import nn

from ..errors import MfclipError
from .config import LoraConfig


def apply_lora(model: nn.Module, cfg: LoraConfig) -> None:
    """Inject LoRA adapters into the chosen towers and freeze those towers' base weights."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    for tower_name in cfg.towers:
        tower = getattr(model, tower_name, None)
        if tower is None:
            raise MfclipError(f"LoRA tower {tower_name!r} is not in this model (valid: visual, text)")
        targets = _target_module_names(tower, cfg.targets)
        if not targets:
            names = {n.split(".")[-1] for n, m in tower.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
            raise MfclipError(
                f"none of the LoRA targets {list(cfg.targets)} is a Linear/Conv2d in the {tower_name} tower; "
                f"candidates: {', '.join(sorted(names)[:20])}"
            )
        for p in tower.parameters():
            p.requires_grad_(False)
        peft_cfg = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                  target_modules=targets)
        inject_adapter_in_model(peft_cfg, tower)


def _target_module_names(tower: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Full names of the modules to adapt: Linear/Conv2d layers whose last name part is in ``targets``.

    nn.MultiheadAttention never calls its ``out_proj`` (it reads ``out_proj.weight`` directly), so an
    adapter on that Linear would get no input and no gradient. Such a target selects the attention module
    itself instead, which peft adapts as a whole (its in_proj and out_proj).
    """
    mha = {n for n, m in tower.named_modules() if isinstance(m, nn.MultiheadAttention)}
    names: list[str] = []
    for name, module in tower.named_modules():
        parent, _, leaf = name.rpartition(".")
        if leaf not in targets:
            continue
        if parent in mha:
            if parent not in names:
                names.append(parent)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            names.append(name)
    return names


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA adapter into its base layer and remove the adapter; returns how many were merged."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer):
                if hasattr(child, "unload_and_optionally_merge_module"):  # peft's MultiheadAttention wrapper
                    base = child.unload_and_optionally_merge_module(merge=True, safe_merge=False, adapter_names=None)
                else:
                    child.merge()
                    base = child.get_base_layer()
                setattr(parent, child_name, base)
                merged += 1
    return merged


def has_lora(model: nn.Module) -> bool:
    """Whether any LoRA adapter is still attached."""
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())
