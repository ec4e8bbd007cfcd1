"""Model configuration as data: typed dataclasses, JSON presets, one precedence rule.

Precedence (lowest to highest): built-in preset < checkpoint < explicit overrides (CLI flags).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

from ..errors import MfclipError
from ..precedence import overlay
from .preprocess import PreprocessConfig

FUSIONS = ("sum", "concat")
BRANCHES = ("both", "image", "noise")
PROMPT_MODES = ("join", "average")
SPA_VARIANTS = ("pair", "matrix", "none")
RESIDUALS = ("srm", "npr")


def _check_choice(what: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise MfclipError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


@dataclass(frozen=True)
class NoiseConfig:
    """Noise branch: fixed SRM bank -> 2 VGG stages -> patch tokens -> pre-LN transformer (SPEC §3)."""

    channels: tuple[int, int] = (32, 64)
    convs_per_stage: int = 3
    token_patch: int = 4  # feature-map cells per token side (28x28 map -> 7x7 tokens)
    width: int = 256
    depth: int = 3
    heads: int = 8
    clip_value: float = 3.0
    # residuals of natural images have std ~0.06; a gain of ~16 brings them to ~1 so that BatchNorm running
    # statistics (initialised at variance 1) are right after tens of steps, not hundreds. 1.0 = no gain.
    srm_gain: float = 1.0
    # what the noise branch reads: "srm" (the fixed SRM bank, SPEC §3) or "npr" (neighbouring-pixel
    # residuals x - up(down(x)) per RGB channel: the trace of 2x upsampling in generator decoders)
    residual: str = "srm"

    def __post_init__(self) -> None:
        _check_choice("noise residual", self.residual, RESIDUALS)


@dataclass(frozen=True)
class LossConfig:
    """Loss weights (SPEC §4): the released code's effective values."""

    temperature: float = 20.0
    kl_weight: float = 0.5
    ce_weight: float = 1.5
    detach_text: bool = False


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters (peft) on the chosen towers; merged into the weights for inference and export."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    towers: tuple[str, ...] = ("visual", "text")
    targets: tuple[str, ...] = ("c_fc", "c_proj", "out_proj")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild an MFCLIP model (stored in every checkpoint)."""

    preset: str
    clip_arch: str | None = None  # registered open_clip name, e.g. "ViT-B-16"
    clip_config: dict[str, Any] | None = None  # inline open_clip config: embed_dim, vision_cfg, text_cfg
    pretrained: str | None = None  # open_clip tag ("openai") or a local weights file, for clip_arch
    quick_gelu: bool = False
    image_init: str | None = None  # "efficientnet-lite0": ImageNet weights for a timm trunk; None/"random": none
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    fusion: str = "sum"
    branches: str = "both"
    prompt_levels: tuple[int, ...] = (1, 2, 3, 4)
    prompt_mode: str = "join"
    spa: str = "pair"
    spa_batch: int = 24
    loss: LossConfig = field(default_factory=LossConfig)
    lora: LoraConfig | None = None
    include_text: bool = True
    # what one image-tower pass sees: 0 = the whole crop; N = an N x N grid of image_patch_px squares cut
    # from the crop, each through the tower, embeddings averaged (no single feature sees the whole face)
    image_patches: int = 0
    image_patch_px: int = 96

    def __post_init__(self) -> None:
        if (self.clip_arch is None) == (self.clip_config is None):
            raise MfclipError("a model config needs exactly one of clip_arch or clip_config")
        _check_choice("fusion", self.fusion, FUSIONS)
        _check_choice("branches", self.branches, BRANCHES)
        _check_choice("prompt mode", self.prompt_mode, PROMPT_MODES)
        _check_choice("SPA variant", self.spa, SPA_VARIANTS)
        if not self.prompt_levels or any(lvl not in (1, 2, 3, 4) for lvl in self.prompt_levels):
            raise MfclipError(f"prompt levels must be a non-empty subset of 1..4, got {self.prompt_levels}")
        if self.image_patches < 0 or (self.image_patches and not 32 <= self.image_patch_px <= self.preprocess.size):
            raise MfclipError(f"image patches must be a grid of 0 (whole crop) or more squares of 32 to "
                              f"{self.preprocess.size} px, got {self.image_patches} x {self.image_patch_px} px")
        if self.image_init not in (None, "random", "efficientnet-lite0"):
            raise MfclipError(f"unknown image_init {self.image_init!r}; valid: efficientnet-lite0, random")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        d["preprocess"] = PreprocessConfig.from_dict(d.get("preprocess") or PreprocessConfig().to_dict())
        n = dict(d.get("noise") or {})
        if "channels" in n:
            n["channels"] = tuple(n["channels"])
        d["noise"] = NoiseConfig(**n)
        d["loss"] = LossConfig(**(d.get("loss") or {}))
        lo = d.get("lora")
        if lo is not None:
            lo = dict(lo)
            lo["towers"] = tuple(lo.get("towers", LoraConfig.towers))
            lo["targets"] = tuple(lo.get("targets", LoraConfig.targets))
            d["lora"] = LoraConfig(**lo)
        d["prompt_levels"] = tuple(d.get("prompt_levels", (1, 2, 3, 4)))
        known = set(ModelConfig.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise MfclipError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        return ModelConfig(**d)

    def with_overrides(self, **overrides: Any) -> ModelConfig:
        """A copy with the given non-None fields replaced (``precedence.overlay``: preset < CLI flags); the
        flags ``lora_rank``, ``colour_norm`` and ``noise_residual`` set the nested field they name."""
        flags = dict(overrides)
        rank = flags.pop("lora_rank", None)
        if rank is not None:
            flags["lora"] = None if rank <= 0 else LoraConfig(rank=rank, alpha=2 * rank)
        flags["preprocess"] = overlay(self.preprocess, colour_norm=flags.pop("colour_norm", None))
        flags["noise"] = overlay(self.noise, residual=flags.pop("noise_residual", None))
        return overlay(self, **flags)


def available_presets() -> list[str]:
    """Names of the built-in presets (JSON files in mfclip_cli/model/presets)."""
    files = resources.files(__package__).joinpath("presets").iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".json"))


def load_preset(name: str) -> ModelConfig:
    """The built-in preset ``name``; an unknown name is an error listing the valid ones."""
    names = available_presets()
    if name not in names:
        raise MfclipError(f"unknown preset {name!r}; valid: {', '.join(names)}")
    text = resources.files(__package__).joinpath("presets", f"{name}.json").read_text()
    d = json.loads(text)
    d.pop("description", None)
    d["preset"] = name
    return ModelConfig.from_dict(d)
