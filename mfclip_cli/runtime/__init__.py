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
class BackendInfo:
    """What a backend loaded: the weights (path, checkpoint SHA-256), the checkpoint's decision threshold and
    input spec, and where it runs. A scan report keeps the part it names (``report.ModelInfo``)."""

    path: str
    sha256: str
    threshold: float
    preprocess: PreprocessConfig
    crop: CropPolicy
    backend: str
    device: str
    extra: dict[str, Any]


class Backend(Protocol):
    info: BackendInfo

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


def onnx_export_for(checkpoint: str) -> str | None:
    """The ONNX export shipped beside a checkpoint (``<stem>_onnx/``) if it was made from exactly that file."""
    import json
    from pathlib import Path

    from ..fsutil import sha256_file

    ckpt = Path(checkpoint)
    folder = ckpt.with_name(ckpt.stem + "_onnx")
    manifest = folder / "manifest.json"
    if not (ckpt.is_file() and manifest.is_file()):
        return None
    try:
        recorded = json.loads(manifest.read_text()).get("checkpoint", {}).get("sha256")
    except (OSError, ValueError):
        return None
    return str(folder) if recorded == sha256_file(ckpt) else None


def load_backend(kind: str, weights: str, device: str = "auto", threads: int | None = None) -> Backend:
    """The backend ``kind`` ('auto' | 'torch' | 'onnx') for a checkpoint file or an exported model folder.

    auto: onnxruntime on CPU when a matching export sits beside the checkpoint (several times faster than
    eager torch here), else torch; on a usable CUDA device, torch (autocast fp16).
    """
    if kind == "auto":
        folder = onnx_export_for(weights)
        if folder is not None and resolve_device(device) == "cpu":
            from .onnx_backend import OnnxBackend

            return OnnxBackend(folder, device="cpu", threads=threads)
        kind = "torch"
    if kind == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend(weights, device=device, threads=threads)
    if kind == "onnx":
        from .onnx_backend import OnnxBackend

        return OnnxBackend(weights, device=device, threads=threads)
    from ..errors import MfclipError

    raise MfclipError(f"unknown backend {kind!r}; valid: auto, torch, onnx")
