"""The MFCLIP model: FLE (text), MVE (image + noise branch), fusion, heads and SPA (SPEC §1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.taxonomy import Label, prompt_text
from .config import ModelConfig
from .noise import NoiseBranch
from .spa import make_spa


class MFCLIP(nn.Module):
    """Multi-modal fine-grained CLIP. Inference uses forward_features -> forward_head only."""

    def __init__(self, cfg: ModelConfig, clip: nn.Module, embed_dim: int, tokenizer):
        super().__init__()
        self.cfg = cfg
        self.embed_dim = embed_dim
        self.tokenizer = tokenizer
        use_image = cfg.branches in ("both", "image")
        use_noise = cfg.branches in ("both", "noise")
        self.visual = clip.visual if use_image else None
        if self.visual is not None and cfg.image_patches and type(self.visual).__name__ == "VisionTransformer":
            from ..errors import MfclipError

            raise MfclipError("--image-patches needs a convolutional image tower (a timm preset such as "
                              "effnet-lite0): a ViT's position embeddings fix its input size")
        if self.visual is not None:
            # NHWC convolutions run about 1.9x faster on CPU (oneDNN) for EfficientNet-Lite; same numbers
            self.visual.to(memory_format=torch.channels_last)
        clip.visual = nn.Identity()  # what remains of `clip` is the text tower (FLE)
        self.text = clip if cfg.include_text else None
        self.noise = NoiseBranch(cfg.noise, cfg.preprocess.patch_size, embed_dim) if use_noise else None
        self.fuse = nn.Linear(2 * embed_dim, embed_dim) if (cfg.fusion == "concat" and cfg.branches == "both") else None
        self.mlp_head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, 2))
        self.predictor = nn.Linear(embed_dim, embed_dim)
        self.spa = make_spa(cfg.spa, embed_dim, cfg.spa_batch)
        self.logit_scale = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(1 / 0.07)))))

    # --- vision (MVE) -------------------------------------------------------------------------------
    def forward_features(self, image: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Fused visual embedding v (B, D) from a CLIP-normalised crop and its richest [0, 1] patch."""
        feats = []
        if self.visual is not None:
            feats.append(self.encode_image(image))
        if self.noise is not None:
            feats.append(self.noise(noise))
        if len(feats) == 1:
            return feats[0]
        if self.fuse is not None:
            return self.fuse(torch.cat(feats, dim=1))
        return feats[0] + feats[1]

    def patch_origins(self) -> list[int]:
        """Top-left offsets (along each axis) of the image patches; empty when the tower sees the whole crop."""
        n, px, size = self.cfg.image_patches, self.cfg.image_patch_px, self.cfg.preprocess.size
        if not n:
            return []
        if n == 1:
            return [(size - px) // 2]
        return [round(i * (size - px) / (n - 1)) for i in range(n)]

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Image-branch embedding (B, D): of the whole crop, or the mean over the grid of patches."""
        origins = self.patch_origins()
        if origins:
            px = self.cfg.image_patch_px
            b = image.shape[0]
            # static slices (not unfold): exports to ONNX as plain Slice/Concat
            image = torch.cat([image[:, :, y:y + px, x:x + px] for y in origins for x in origins], dim=0)
        if image.dim() == 4 and not torch.onnx.is_in_onnx_export():
            image = image.contiguous(memory_format=torch.channels_last)
        v = self.visual(image)
        if origins:
            v = v.reshape(len(origins) ** 2, b, -1).mean(dim=0)
        return v

    def forward_head(self, v: torch.Tensor) -> torch.Tensor:
        """Real/fake logits (B, 2) from the embedding: mlp_head(normalise(v))."""
        return self.mlp_head(F.normalize(v, dim=-1))

    def predict_proba(self, image: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """P(fake) per sample, shape (B,)."""
        return self.forward_head(self.forward_features(image, noise)).softmax(dim=-1)[:, 1]

    # --- text (FLE) ---------------------------------------------------------------------------------
    def prompts_for(self, labels: Sequence[Label]) -> list[str]:
        """The prompt string(s) of each label under this model's prompt levels."""
        return [prompt_text(lb, self.cfg.prompt_levels) for lb in labels]

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Text features (N, D) of raw prompt strings."""
        if self.text is None:
            raise RuntimeError("this model was saved without its text tower (inference-only checkpoint)")
        device = self.logit_scale.device
        tokens = self.tokenizer(list(texts)).to(device)
        return self.text.encode_text(tokens)

    def encode_labels(self, labels: Sequence[Label]) -> torch.Tensor:
        """Text feature t (B, D) of each label's hierarchical prompt; every used level reaches t.

        join: the levels form one prompt, pooled at its end token. average: each level is encoded alone
        and the features are averaged. Identical prompts in a batch are encoded once.
        """
        if self.cfg.prompt_mode == "join":
            texts = self.prompts_for(labels)
            uniq = sorted(set(texts))
            feats = self.encode_text(uniq)
            index = torch.tensor([uniq.index(t) for t in texts], device=feats.device)
            return feats[index]
        per_label = [[lb.prompts()[lvl - 1] for lvl in self.cfg.prompt_levels] for lb in labels]
        uniq = sorted({s for levels in per_label for s in levels})
        feats = self.encode_text(uniq)
        rows = [feats[[uniq.index(s) for s in levels]].mean(dim=0) for levels in per_label]
        return torch.stack(rows)

    # --- training forward ---------------------------------------------------------------------------
    def forward(self, image: torch.Tensor, noise: torch.Tensor, labels: Sequence[Label] | None = None
                ) -> dict[str, torch.Tensor]:
        """Embedding and logits; with labels also text features, predictor output and SPA similarities."""
        v = self.forward_features(image, noise)
        v_hat = F.normalize(v, dim=-1)
        out = {"v": v, "logits": self.mlp_head(v_hat)}
        if labels is None:
            return out
        t = self.encode_labels(labels)
        t_hat = F.normalize(t, dim=-1)
        scale = self.logit_scale.exp().clamp(max=100.0)
        sim = scale * v_hat @ t_hat.T
        out.update(t=t, p=self.predictor(v_hat), sim=self.spa(sim, v_hat, t_hat))
        return out

    def trainable_fraction(self) -> float:
        """Share of parameters that will be updated."""
        total = sum(p.numel() for p in self.parameters())
        train = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return train / max(total, 1)


class ImageEncoder(nn.Module):
    """Inference graph for export: (image, noise) -> (P(fake), logits, fused embedding)."""

    def __init__(self, model: MFCLIP):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, noise: torch.Tensor):
        v = self.model.forward_features(image, noise)
        logits = self.model.forward_head(v)
        return logits.softmax(dim=-1)[:, 1], logits, v
