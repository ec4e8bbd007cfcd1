"""Reduced-precision image encoders (int8, fp16) and how far they are from fp32 torch."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import MfclipError
from ..metrics import roc_auc
from ..model.mfclip import MFCLIP, ImageEncoder
from ..model.preprocess import PreprocessConfig, prepare_batch
from ..runtime.onnx_backend import (
    IMAGE_INPUTS,
    IMAGE_OUTPUTS,
    open_session,
)
from .graph import TRACE_BATCH, Fp32IO, export_graph
from .inputs import take
from .parity import run_session, torch_image_outputs

# Dynamic int8 quantisation (weights int8, activations quantised at run time). Measured on the
# effnet-lite0 preset (2-core AVX2 CPU, no VNNI): without reduce_range the u8s8 kernels saturate (max
# score diff 0.11 vs 0.005); per-channel did not help; ConvInteger ran ~10x slower than fp32 convs, so
# convolutions stay fp32 and only MatMul/Gemm (transformers, projections, heads) are quantised.
INT8_SETTINGS: dict[str, Any] = {
    "method": "onnxruntime.quantization.quantize_dynamic",
    "weight_type": "QInt8",
    "per_channel": False,
    "reduce_range": True,
    "op_types": ["MatMul", "Gemm"],
}


@dataclass(frozen=True)
class VariantFigure:
    """How far a reduced-precision image encoder's outputs are from fp32 torch on the calibration crops."""

    variant: str
    path: str
    method: str
    settings: dict[str, Any]
    images: int
    max_score_diff: float
    mean_score_diff: float
    max_logit_diff: float
    auc_torch: float | None = None
    auc_onnx: float | None = None

    @property
    def auc_change(self) -> float | None:
        if self.auc_torch is None or self.auc_onnx is None:
            return None
        return self.auc_onnx - self.auc_torch

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "file": Path(self.path).name, "method": self.method,
                "settings": dict(self.settings), "images": self.images,
                "max_score_diff": self.max_score_diff, "mean_score_diff": self.mean_score_diff,
                "max_logit_diff": self.max_logit_diff, "auc_torch": self.auc_torch,
                "auc_onnx": self.auc_onnx, "auc_change": self.auc_change}


def choose_fp16_method() -> str:
    """How an fp16 graph can be made here: onnxconverter-common, else a CUDA half export."""
    try:
        import onnxconverter_common  # noqa: F401
    except ImportError:
        pass
    else:
        return "onnxconverter-common"
    if torch.cuda.is_available():
        return "torch-cuda-half"
    raise MfclipError(
        "fp16 export needs a CUDA device / onnxconverter-common: neither is available here. "
        "Run on a machine with CUDA, install onnxconverter-common, or drop --fp16 (the int8 graph "
        "(--int8) is the CPU option)."
    )


# --- reduced-precision variants -----------------------------------------------------------------------

def _chunks(crops: list[np.ndarray], pre: PreprocessConfig, size: int = 8):
    for start in range(0, len(crops), size):
        yield prepare_batch(crops[start : start + size], pre)


def torch_reference(encoder: nn.Module, crops: list[np.ndarray], pre: PreprocessConfig) -> dict[str, np.ndarray]:
    parts = [torch_image_outputs(encoder, image, noise) for image, noise in _chunks(crops, pre)]
    return {k: np.concatenate([p[k] for p in parts]) for k in ("p_fake", "logits")}


def _variant_figure(variant: str, path: Path, method: str, settings: dict[str, Any], crops: list[np.ndarray],
                    pre: PreprocessConfig, reference: dict[str, np.ndarray], labels: np.ndarray | None,
                    device: str = "cpu") -> VariantFigure:
    session, _ = open_session(path, device)
    scores, logits = [], []
    for image, noise in _chunks(crops, pre):
        p, lg, _ = run_session(session, {"image": image, "noise": noise}, path.name)
        scores.append(p)
        logits.append(lg)
    p = np.concatenate(scores).astype(np.float64)
    score_diff = np.abs(p - reference["p_fake"])
    logit_diff = np.abs(np.concatenate(logits).astype(np.float64) - reference["logits"])
    return VariantFigure(
        variant=variant, path=str(path), method=method, settings=settings, images=len(crops),
        max_score_diff=float(score_diff.max()), mean_score_diff=float(score_diff.mean()),
        max_logit_diff=float(logit_diff.max()),
        auc_torch=None if labels is None else roc_auc(reference["p_fake"], labels),
        auc_onnx=None if labels is None else roc_auc(p, labels),
    )


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def export_int8(fp32_path: Path, path: Path, crops: list[np.ndarray], pre: PreprocessConfig,
                 reference: dict[str, np.ndarray], labels: np.ndarray | None) -> VariantFigure:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    s = INT8_SETTINGS
    root = logging.getLogger()
    hush = _DropMessage("consider to run pre-processing before quantization")
    root.addFilter(hush)  # its shape-inference pre-pass changes nothing for these graphs
    try:
        quantize_dynamic(str(fp32_path), str(path), weight_type=QuantType.QInt8, per_channel=s["per_channel"],
                         reduce_range=s["reduce_range"], op_types_to_quantize=list(s["op_types"]))
    except Exception as exc:  # the quantiser raises many types
        raise MfclipError(f"int8 quantisation of {fp32_path.name} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        root.removeFilter(hush)
    settings = {k: v for k, v in s.items() if k != "method"}
    return _variant_figure("int8", path, s["method"], settings, crops, pre, reference, labels)


def export_fp16(method: str, model: MFCLIP, fp32_path: Path, path: Path, crops: list[np.ndarray],
                 pre: PreprocessConfig, reference: dict[str, np.ndarray], labels: np.ndarray | None,
                 opset: int) -> VariantFigure:
    """fp16 weights and compute behind float32 inputs/outputs, by onnxconverter-common or a CUDA trace."""
    if method == "onnxconverter-common":
        import onnx
        from onnxconverter_common import float16

        half = float16.convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
        onnx.save(half, str(path))
        device = "auto"
    else:
        import copy

        half_encoder = Fp32IO(ImageEncoder(copy.deepcopy(model).half().cuda().eval())).eval()
        image, noise = prepare_batch(take(crops, TRACE_BATCH), pre)
        args = (torch.from_numpy(image).cuda(), torch.from_numpy(noise).cuda())
        export_graph(half_encoder, args, path, IMAGE_INPUTS, IMAGE_OUTPUTS, opset)
        device = "auto"  # CUDA when onnxruntime-gpu works, else CPU (reported in the figure's settings)
    return _variant_figure("fp16", path, method, {"io": "float32"}, crops, pre, reference, labels, device)
