"""Aligned pseudo-fakes (issue #14 item 4): real training faces passed through a small autoencoder trained
here on those reals, so a reconstruction differs from its real only by what the decoder leaves.

The decoder upsamples like image generators' decoders do (nearest x2 then convolutions), twice; the latent
is a quarter of the side with few channels, so the decoder has to synthesise the fine texture. It is trained
on random patches of the real crops (fully convolutional, so it then runs on whole crops), with an L1 loss on
pixels and on their Laplacian, so the reconstructions keep sharpness and the difference is the trace, not
blur. The trained weights are stored in the run folder (safetensors) and reused on resume.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class SmallAutoencoder(nn.Module):
    """RGB [0, 1] (B, 3, H, W) -> reconstruction of the same size; H and W multiples of 4.

    The latent is the 4x average-pooled image plus ``latent`` learned channels at that resolution; the decoder
    adds its synthesised detail to the bilinear upsampling of the pooled image, so colour and layout are the
    input's from the first step and what the decoder contributes is the fine texture.
    """

    def __init__(self, width: int = 32, latent: int = 5):
        super().__init__()
        w = width
        self.encode = nn.Sequential(
            nn.Conv2d(3, w, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w, latent, 1),
        )
        self.decode = nn.Sequential(
            nn.Conv2d(latent + 3, w, 1), nn.ReLU(inplace=True),
            nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w, 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = F.avg_pool2d(x, 4)
        z = torch.cat([low, torch.tanh(self.encode(x))], dim=1)
        base = F.interpolate(low, scale_factor=4.0, mode="bilinear", align_corners=False)
        return (base + self.decode(z)).clamp(0.0, 1.0)


def _laplacian(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=x.device, dtype=x.dtype)
    return F.conv2d(x, k.expand(x.shape[1], 1, 3, 3), padding=1, groups=x.shape[1])


def train_autoencoder(crops: Sequence[Callable[[], np.ndarray]], *, steps: int = 400, batch: int = 16,
                      patch: int = 64, lr: float = 2e-3, seed: int = 0,
                      on_step: Callable[[int, float], None] | None = None) -> SmallAutoencoder:
    """A :class:`SmallAutoencoder` fitted to random ``patch``-px squares of the given real crops.

    ``crops``: loaders of uint8 RGB crops (called as needed; a crop is read once per draw). Seeded.
    """
    if not crops:
        raise ValueError("no real crops to train the autoencoder on")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 13])
    model = SmallAutoencoder()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    pool: list[np.ndarray] = []
    for step in range(steps):
        if step % 25 == 0:  # refresh a small pool of decoded crops; patches are drawn from it
            pick = rng.choice(len(crops), size=min(len(crops), 16), replace=False)
            pool = [crops[int(i)]() for i in pick]
        xs = []
        for _ in range(batch):
            img = pool[int(rng.integers(len(pool)))]
            h, w = img.shape[:2]
            y0, x0 = int(rng.integers(0, h - patch + 1)), int(rng.integers(0, w - patch + 1))
            xs.append(img[y0:y0 + patch, x0:x0 + patch])
        x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().div(255.0)
        if torch.rand(1, generator=gen).item() < 0.5:
            x = x.flip(-1)
        out = model(x)
        loss = (out - x).abs().mean() + (_laplacian(out) - _laplacian(x)).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if on_step is not None:
            on_step(step, float(loss.detach()))
    return model.eval()


def reconstruct(model: SmallAutoencoder, crop: np.ndarray) -> np.ndarray:
    """The uint8 RGB reconstruction of one crop (its size kept; edges padded to a multiple of 4)."""
    h, w = crop.shape[:2]
    ph, pw = (-h) % 4, (-w) % 4
    x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float().div(255.0)[None]
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    with torch.no_grad():
        out = model(x)[0, :, :h, :w]
    return (out.permute(1, 2, 0).mul(255.0).round().clamp(0, 255).to(torch.uint8).numpy())


def save_autoencoder(model: SmallAutoencoder, path: str | Path) -> None:
    from safetensors.torch import save

    from ..fsutil import atomic_write_bytes

    atomic_write_bytes(path, save({k: v.contiguous() for k, v in model.state_dict().items()}))


def load_autoencoder(path: str | Path) -> SmallAutoencoder:
    from safetensors.torch import load_file

    model = SmallAutoencoder()
    model.load_state_dict(load_file(str(path)))
    return model.eval()
