"""Sample pair attention (SPEC §4): learned re-weighting of the image-text similarity matrix."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import MfclipError


class PairSPA(nn.Module):
    """S' = S * sigmoid(w . (v_i * t_j) + b): a content-dependent weight per image-text pair, any batch size.

    w . (v_i * t_j) = (v_i * w) . t_j, so the whole B x B weight matrix is one matmul.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim))
        self.b = nn.Parameter(torch.zeros(()))

    def forward(self, sim: torch.Tensor, v_hat: torch.Tensor, t_hat: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid((v_hat * self.w) @ t_hat.T + self.b)
        return sim * gate


class MatrixSPA(nn.Module):
    """The released code's variant: S' = S * sigmoid(W), W in R^{B x B}, zero-initialised; fixed batch size."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size
        self.weight = nn.Parameter(torch.zeros(batch_size, batch_size))

    def forward(self, sim: torch.Tensor, v_hat: torch.Tensor, t_hat: torch.Tensor) -> torch.Tensor:
        if sim.shape != (self.batch_size, self.batch_size):
            raise MfclipError(
                f"spa='matrix' was built for batch size {self.batch_size} but got a batch of {sim.shape[0]}; "
                f"train with --batch-size {self.batch_size} and drop_last, or use spa='pair' (any batch size)"
            )
        return sim * torch.sigmoid(self.weight)


class NoSPA(nn.Module):
    """Ablation: the plain similarity matrix."""

    def forward(self, sim: torch.Tensor, v_hat: torch.Tensor, t_hat: torch.Tensor) -> torch.Tensor:
        return sim


def make_spa(variant: str, dim: int, batch_size: int) -> nn.Module:
    """The SPA module for ``variant`` ('pair' | 'matrix' | 'none')."""
    if variant == "pair":
        return PairSPA(dim)
    if variant == "matrix":
        return MatrixSPA(batch_size)
    if variant == "none":
        return NoSPA()
    raise MfclipError(f"unknown SPA variant {variant!r}; valid: pair, matrix, none")
