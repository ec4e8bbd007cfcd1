"""Noise branch of the MVE (SPEC §3.3-4): fixed SRM residuals of the richest patch -> CNN -> transformer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import NoiseConfig


def srm_kernels() -> torch.Tensor:
    """The three fixed 5x5 SRM filters (KB/4, KV/12, 2nd-order horizontal /2), shape (3, 1, 5, 5)."""
    kb = torch.tensor(
        [[0, 0, 0, 0, 0], [0, -1, 2, -1, 0], [0, 2, -4, 2, 0], [0, -1, 2, -1, 0], [0, 0, 0, 0, 0]],
        dtype=torch.float32,
    ) / 4.0
    kv = torch.tensor(
        [
            [-1, 2, -2, 2, -1],
            [2, -6, 8, -6, 2],
            [-2, 8, -12, 8, -2],
            [2, -6, 8, -6, 2],
            [-1, 2, -2, 2, -1],
        ],
        dtype=torch.float32,
    ) / 12.0
    h2 = torch.zeros(5, 5)
    h2[2] = torch.tensor([0, 1, -2, 1, 0], dtype=torch.float32)
    h2 = h2 / 2.0
    return torch.stack([kb, kv, h2]).unsqueeze(1)


class SRMFilter(nn.Module):
    """Fixed (non-learned) SRM bank applied to R+G+B, clipped to [-clip, clip], then times ``gain``."""

    def __init__(self, clip_value: float = 3.0, gain: float = 1.0):
        super().__init__()
        self.register_buffer("weight", srm_kernels(), persistent=False)
        self.clip_value = clip_value
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        summed = x.sum(dim=1, keepdim=True)
        out = F.conv2d(summed, self.weight.to(summed.dtype), padding=2).clamp(-self.clip_value, self.clip_value)
        return out * self.gain if self.gain != 1.0 else out


class NPRFilter(nn.Module):
    """Neighbouring-pixel residuals: x minus its 2x nearest-neighbour down- and up-sampled copy, per channel,
    times ``gain`` (each 2x2 cell minus its top-left pixel)."""

    def __init__(self, gain: float = 1.0):
        super().__init__()
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] - x.shape[-2] % 2, x.shape[-1] - x.shape[-1] % 2
        x = x[..., :h, :w]
        out = x - F.interpolate(x[..., ::2, ::2], scale_factor=2.0, mode="nearest")
        return out * self.gain if self.gain != 1.0 else out


def _vgg_stage(cin: int, cout: int, n: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                   nn.ReLU(inplace=True)]
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Block(nn.Module):
    """Pre-LN transformer block on scaled_dot_product_attention (exports cleanly to ONNX)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.ln1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.ln2(x))


class NoiseBranch(nn.Module):
    """SRM -> VGG stages -> real patch tokens (one per feature-map cell block) -> CLS transformer -> D."""

    def __init__(self, cfg: NoiseConfig, patch_size: int, out_dim: int):
        super().__init__()
        # the attribute keeps its name for either residual, so checkpoints of both kinds load alike
        self.srm = SRMFilter(cfg.clip_value, cfg.srm_gain) if cfg.residual == "srm" else NPRFilter(cfg.srm_gain)
        c1, c2 = cfg.channels
        self.stages = nn.Sequential(_vgg_stage(3, c1, cfg.convs_per_stage), _vgg_stage(c1, c2, cfg.convs_per_stage))
        fmap = patch_size // 4
        if fmap % cfg.token_patch:
            raise ValueError(f"feature map {fmap} is not divisible by token_patch {cfg.token_patch}")
        n_tokens = (fmap // cfg.token_patch) ** 2
        self.tokenize = nn.Conv2d(c2, cfg.width, kernel_size=cfg.token_patch, stride=cfg.token_patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos = nn.Parameter(torch.randn(1, n_tokens + 1, cfg.width) * 0.02)
        self.blocks = nn.Sequential(*[Block(cfg.width, cfg.heads) for _ in range(cfg.depth)])
        self.ln = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, out_dim)
        self.n_tokens = n_tokens

    def forward(self, patch: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.srm(patch))
        tokens = self.tokenize(x).flatten(2).transpose(1, 2)  # (B, N, width)
        cls = self.cls.expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1) + self.pos
        x = self.blocks(x)
        return self.proj(self.ln(x[:, 0]))
