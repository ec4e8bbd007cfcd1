"""Per-face explanations: a heat map of what drove a face's score, computed by the backend that scored it.

- torch backend: Grad-CAM on the image tower's last stage (EfficientNet/timm trunks: the last feature map;
  ViT towers: the patch tokens after the last transformer block).
- onnx backend: occlusion sensitivity: the crop's image input is blanked (0, the normalised mean) under a
  sliding window, all occluded copies run as batches through the same graph, and a pixel's heat is the mean
  drop in the verdict's log-odds over the windows that cover it.

Both explain the image tower's input with the noise input held fixed (the exact arrays the score came
from); what the noise branch read is shown beside, as the richest-texture patch (``preprocess.patch_box``).
The heat is the evidence for the face's verdict side of the threshold ("fake" at or above it, else
"real"), is zero where the preprocessing mask blanks the input (the model never saw those pixels), and
sums to 1. Everything here is arrays in, arrays out; writing PNGs is the report layer's job.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .errors import MfclipError
from .model.preprocess import PreprocessConfig, face_mask

METHODS = ("grad-cam", "occlusion")
OCCLUSION_WINDOW_FRAC = 1 / 7  # window side as a share of the crop side (32 px on 224)
OCCLUSION_BATCH = 32


@dataclass(frozen=True)
class CropExplanation:
    """One face's heat map over its model-input crop and how it was made."""

    heat: np.ndarray  # (S, S) float32, >= 0, sums to 1
    method: str  # one of METHODS
    backend: str  # "torch" | "onnx"
    target: str  # "fake" | "real": the side of the threshold the heat is evidence for
    score: float  # P(fake) of the unmodified input in the explaining pass (equals the scan's score)
    detail: str  # the layer (Grad-CAM) or the window (occlusion)


class Explainer(Protocol):
    def explain(self, image: np.ndarray, noise: np.ndarray, target: str) -> CropExplanation:
        """Heat map for one face: image (3, S, S) and noise (3, P, P) exactly as scored."""
        ...


def make_explainer(backend: Any) -> Explainer:
    """The explainer of a loaded scan backend (torch → Grad-CAM, onnx → occlusion), running on it."""
    kind = backend.info.backend
    if kind == "torch":
        return GradCamExplainer(backend.model, backend.info.preprocess, backend.device)
    if kind == "onnx":
        return OcclusionExplainer(backend, backend.info.preprocess)
    raise MfclipError(f"--explain has no method for backend {kind!r}; valid: torch (Grad-CAM), onnx (occlusion)")


def finish_heat(raw: np.ndarray, pre: PreprocessConfig) -> np.ndarray:
    """``raw`` (S, S) heat made a distribution: negatives cut, zero outside the preprocessing mask, sum 1.

    A map with no positive evidence left becomes uniform over the kept pixels (nothing stands out).
    """
    heat = np.maximum(np.nan_to_num(raw.astype(np.float64), nan=0.0), 0.0)
    keep = face_mask(pre.size, pre.mask)
    if keep is not None:
        heat = heat * keep
    total = heat.sum()
    if not total > 0:
        heat = np.ones_like(heat) if keep is None else keep.astype(np.float64)
        total = heat.sum()
    return (heat / total).astype(np.float32)


def _resize_heat(cam: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return cv2.resize(cam.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)


# --- torch: Grad-CAM ------------------------------------------------------------------------------


def grad_cam_layer(visual: Any) -> tuple[Any, str, str]:
    """(module, its name, "map" | "tokens") whose output Grad-CAM weighs: the image tower's last stage."""
    trunk = getattr(visual, "trunk", None)
    if trunk is not None:  # open_clip TimmModel
        for name in ("bn2", "conv_head", "norm_pre", "final_conv"):  # the module ending forward_features
            if getattr(trunk, name, None) is not None:
                return getattr(trunk, name), f"visual.trunk.{name}", "map"
        for name in ("stages", "layer4", "blocks", "features"):
            seq = getattr(trunk, name, None)
            if seq is not None:
                last = seq[-1] if hasattr(seq, "__getitem__") else seq
                return last, f"visual.trunk.{name}[-1]", "map"
    transformer = getattr(visual, "transformer", None)
    if transformer is not None and hasattr(transformer, "resblocks"):  # open_clip VisionTransformer
        return transformer.resblocks[-1], "visual.transformer.resblocks[-1]", "tokens"
    raise MfclipError(f"Grad-CAM does not know the image tower {type(visual).__name__}; supported: open_clip "
                      f"timm towers (EfficientNet, ConvNeXt, ResNet) and VisionTransformer. Use --backend onnx "
                      f"(occlusion) to explain this model.")


def _tokens_to_map(tokens: Any, batch_first: bool) -> Any:
    """(B, C, g, g) feature map from ViT block output (class token first, g*g patch tokens after)."""
    x = tokens if batch_first else tokens.transpose(0, 1)
    patches = x[:, 1:, :]
    g = round(patches.shape[1] ** 0.5)
    if g * g != patches.shape[1]:
        raise MfclipError(f"cannot lay {patches.shape[1]} ViT tokens out on a square grid for Grad-CAM")
    return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], g, g)


class GradCamExplainer:
    """Grad-CAM of the verdict's log-odds on the image tower's last stage (torch backend)."""

    def __init__(self, model: Any, pre: PreprocessConfig, device: str = "cpu"):
        if model.visual is None:
            raise MfclipError("--explain needs the image tower; this model uses the noise branch only")
        self.model = model
        self.pre = pre
        self.device = device
        self.layer, self.layer_name, self.kind = grad_cam_layer(model.visual)
        self.batch_first = bool(getattr(getattr(model.visual, "transformer", None), "batch_first", True))

    def explain(self, image: np.ndarray, noise: np.ndarray, target: str) -> CropExplanation:
        import torch

        me = threading.get_ident()
        seen: list[Any] = []

        def keep_output(_module: Any, _inputs: Any, output: Any) -> None:
            # the scan's other workers run the same modules at the same time: keep only this thread's pass
            if threading.get_ident() == me:
                seen.append(output[0] if isinstance(output, tuple) else output)

        handle = self.layer.register_forward_hook(keep_output)
        try:
            with torch.enable_grad():
                img = torch.from_numpy(np.ascontiguousarray(image[None], np.float32)).to(self.device)
                img.requires_grad_(True)
                nz = torch.from_numpy(np.ascontiguousarray(noise[None], np.float32)).to(self.device)
                logits = self.model.forward_head(self.model.forward_features(img, nz)).float()
                log_odds = logits[0, 1] - logits[0, 0]
                objective = log_odds if target == "fake" else -log_odds
                act = seen[-1]
                (grad,) = torch.autograd.grad(objective, act)
        finally:
            handle.remove()
        if self.kind == "tokens":
            act, grad = _tokens_to_map(act, self.batch_first), _tokens_to_map(grad, self.batch_first)
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((weights * act).sum(dim=1))[0].detach().float().cpu().numpy()
        score = float(torch.softmax(logits.detach(), dim=-1)[0, 1])
        heat = finish_heat(_resize_heat(cam, self.pre.size), self.pre)
        return CropExplanation(heat=heat, method="grad-cam", backend="torch", target=target, score=score,
                               detail=f"{self.layer_name} ({cam.shape[0]}x{cam.shape[1]} map)")


# --- onnx: occlusion sensitivity ------------------------------------------------------------------


def occlusion_windows(size: int, window: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of the sliding windows, the last row/column flush with the crop's edge."""
    starts = list(range(0, max(size - window, 0) + 1, stride))
    if starts[-1] != max(size - window, 0):
        starts.append(size - window)
    return [(y, x) for y in starts for x in starts]


class OcclusionExplainer:
    """Occlusion sensitivity of the verdict's log-odds, run as batches on the scan's ONNX session."""

    def __init__(self, backend: Any, pre: PreprocessConfig, window: int | None = None, stride: int | None = None):
        self.backend = backend
        self.pre = pre
        self.window = window or max(4, round(pre.size * OCCLUSION_WINDOW_FRAC))
        self.stride = stride or max(1, self.window // 2)

    def _log_odds(self, image: np.ndarray, noise: np.ndarray) -> np.ndarray:
        logits = self.backend.outputs(image, noise)["logits"].astype(np.float64)
        return logits[:, 1] - logits[:, 0]

    def explain(self, image: np.ndarray, noise: np.ndarray, target: str) -> CropExplanation:
        sign = 1.0 if target == "fake" else -1.0
        base = self._log_odds(image[None], noise[None])[0]
        corners = occlusion_windows(self.pre.size, self.window, self.stride)
        heat = np.zeros((self.pre.size, self.pre.size), np.float64)
        cover = np.zeros_like(heat)
        w = self.window
        for start in range(0, len(corners), OCCLUSION_BATCH):
            chunk = corners[start:start + OCCLUSION_BATCH]
            copies = np.repeat(image[None], len(chunk), axis=0)
            for k, (y, x) in enumerate(chunk):
                copies[k, :, y:y + w, x:x + w] = 0.0
            drops = sign * (base - self._log_odds(copies, np.repeat(noise[None], len(chunk), axis=0)))
            for (y, x), d in zip(chunk, drops):
                heat[y:y + w, x:x + w] += d
                cover[y:y + w, x:x + w] += 1.0
        score = float(1.0 / (1.0 + np.exp(-base)))
        return CropExplanation(heat=finish_heat(heat / np.maximum(cover, 1.0), self.pre), method="occlusion",
                               backend="onnx", target=target, score=score,
                               detail=f"window {w} px, stride {self.stride} px, {len(corners)} occluded copies")


# --- pictures -------------------------------------------------------------------------------------


def heat_to_uint16(heat: np.ndarray) -> np.ndarray:
    """The heat map as a 16-bit grey image, its maximum at 65535 (mass ratios are kept: it is a linear scale)."""
    peak = float(heat.max())
    scaled = heat / peak * 65535.0 if peak > 0 else np.zeros_like(heat)
    return np.clip(np.rint(scaled), 0, 65535).astype(np.uint16)


def render_overlay(crop: np.ndarray, heat: np.ndarray, box: tuple[int, int, int, int], alpha: float = 0.5
                   ) -> np.ndarray:
    """RGB uint8: the crop under a colour-mapped heat map (blue low → red high), with the noise branch's
    patch ``box`` [x1, y1, x2, y2) outlined in white over a black edge."""
    import cv2

    peak = float(heat.max())
    level = np.zeros(heat.shape, np.uint8) if peak <= 0 else np.clip(heat / peak * 255.0, 0, 255).astype(np.uint8)
    colour = cv2.applyColorMap(level, cv2.COLORMAP_JET)[:, :, ::-1]
    out = cv2.addWeighted(crop, 1.0 - alpha, colour, alpha, 0.0)
    x1, y1, x2, y2 = box
    cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), (0, 0, 0), 4)
    cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), (255, 255, 255), 2)
    return np.ascontiguousarray(out)
