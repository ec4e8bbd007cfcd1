"""Inference backends behind one interface: a batch of (image, noise) arrays in, P(fake) out.

Backends: ``torch`` (a checkpoint, CPU or CUDA, autocast on CUDA) and ``onnx`` (an exported model
folder on onnxruntime). Both read preprocessing, crop policy and threshold from what they load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..faces.types import CropPolicy
from ..model.preprocess import PreprocessConfig


@dataclass(frozen=True)
class ModelInfo:
    """What a report says about the model that produced its scores."""

    path: str
    sha256: str
    threshold: float
    preprocess: PreprocessConfig
    crop: CropPolicy
    backend: str
    device: str
    extra: dict[str, Any]


class Backend(Protocol):
    info: ModelInfo

    def predict(self, image: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """P(fake) for a batch: image (B,3,S,S) CLIP-normalised, noise (B,3,S/g,S/g) in [0,1] -> (B,)."""
        ...


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a CUDA device really works, else 'cpu'; explicit names are checked."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        from ..errors import MfclipError

        raise MfclipError("--device cuda was asked for but no CUDA device is usable here; use --device cpu or auto")
    if device not in ("cpu",) and not device.startswith("cuda"):
        from ..errors import MfclipError

        raise MfclipError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N")
    return device


def load_backend(kind: str, weights: str, device: str = "auto", threads: int | None = None) -> Backend:
    """The backend ``kind`` ('torch' | 'onnx') for a checkpoint file or an exported model folder."""
    if kind == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend(weights, device=device, threads=threads)
    if kind == "onnx":
        from .onnx_backend import OnnxBackend

        return OnnxBackend(weights, device=device, threads=threads)
    from ..errors import MfclipError

    raise MfclipError(f"unknown backend {kind!r}; valid: torch, onnx")
