"""Eager PyTorch inference from an mfclip checkpoint."""

from __future__ import annotations

import numpy as np
import torch

from ..model.checkpoint import load_checkpoint
from . import BackendInfo, resolve_device


class TorchBackend:
    """Runs MFCLIP's image path (forward_features -> forward_head) with torch."""

    def __init__(self, checkpoint: str, device: str = "auto", threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.model, self.meta = load_checkpoint(checkpoint, device=self.device)
        self.info = BackendInfo(
            path=str(checkpoint), sha256=self.meta.sha256, threshold=self.meta.decision_threshold().value,
            preprocess=self.model.cfg.preprocess, crop=self.meta.input_spec().crop, backend="torch",
            device=self.device, extra={"preset": self.model.cfg.preset},
        )

    @torch.inference_mode()
    def predict(self, image: np.ndarray, noise: np.ndarray) -> np.ndarray:
        img = torch.from_numpy(image).to(self.device)
        nz = torch.from_numpy(noise).to(self.device)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.device.startswith("cuda")):
            p = self.model.predict_proba(img, nz)
        return p.float().cpu().numpy().astype(np.float64)
