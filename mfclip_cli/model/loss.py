"""The MFCLIP training objective, apart from the model: named terms the train loop logs as they are."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import LossConfig


def multi_positive_targets(prompt_ids: torch.Tensor) -> torch.Tensor:
    """Row-normalised targets: sample i's positives are all j with the same prompt (SPEC §4).

    The relation is symmetric, so the same matrix serves the image->text and text->image directions.
    """
    same = (prompt_ids[:, None] == prompt_ids[None, :]).to(torch.float32)
    return same / same.sum(dim=1, keepdim=True)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_j targets_ij * log softmax(logits)_ij."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class MFCLIPLoss(nn.Module):
    """Loss = contrastive (SPA-weighted, multi-positive) + lambda_kl T^2 KL + lambda_ce CE."""

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, out: dict[str, torch.Tensor], y: torch.Tensor, prompt_ids: Sequence[int] | torch.Tensor,
                teacher_p: torch.Tensor | None = None, teacher_weight: float = 0.0) -> dict[str, torch.Tensor]:
        """The named terms; with ``teacher_p`` (teachers' P(fake) per sample) the classification term is
        (1 - teacher_weight) x CE(hard labels) + teacher_weight x CE(teachers' probabilities)."""
        cfg = self.cfg
        pid = torch.as_tensor(prompt_ids, device=y.device)
        targets = multi_positive_targets(pid).to(out["sim"].dtype)
        sim = out["sim"].float()
        contrastive = 0.5 * (soft_cross_entropy(sim, targets) + soft_cross_entropy(sim.T, targets.T))
        t = out["t"].float()
        if cfg.detach_text:
            t = t.detach()
        temp = cfg.temperature
        kl = F.kl_div(
            F.log_softmax(out["p"].float() / temp, dim=1), F.softmax(t / temp, dim=1), reduction="batchmean"
        ) * temp**2
        logits = out["logits"].float()
        ce = F.cross_entropy(logits, y)
        classify = ce
        terms: dict[str, torch.Tensor] = {}
        if teacher_p is not None:
            p = teacher_p.detach().float().clamp(0.0, 1.0)
            distill = soft_cross_entropy(logits, torch.stack([1.0 - p, p], dim=1))
            classify = (1.0 - teacher_weight) * ce + teacher_weight * distill
            terms["distill_loss"] = distill.detach()
        total = contrastive + cfg.kl_weight * kl + cfg.ce_weight * classify
        return {"loss": total, "contrastive_loss": contrastive.detach(), "kl_loss": kl.detach(),
                "ce_loss": ce.detach(), **terms}
