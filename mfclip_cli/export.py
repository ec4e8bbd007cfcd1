"""`mfclip export`: a checkpoint -> an ONNX model folder, checked against torch before it is kept.

The folder holds ``image_encoder.onnx`` ((image, noise) -> p_fake, logits, embedding), optionally
``text_encoder.onnx`` (tokens -> text_features) and quantised image encoders, and ``manifest.json``
(preprocessing, crop policy, threshold, IO, versions, parity figures). It is written into a temporary
sibling folder and renamed into place only after onnxruntime reproduces torch on real batches, so a
failed export leaves nothing behind. Layout and names: ``mfclip_cli.runtime.onnx_backend``.
"""

from __future__ import annotations

import logging
import os
import platform
import secrets
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .data.taxonomy import Label
from .errors import MfclipError
from .fsutil import atomic_write_json, sha256_file
from .metrics import roc_auc
from .model.checkpoint import load_checkpoint
from .model.metadata import CheckpointMeta
from .model.mfclip import MFCLIP, ImageEncoder
from .model.preprocess import PreprocessConfig, prepare_batch
from .runtime.onnx_backend import (
    IMAGE_ENCODER_FILES,
    IMAGE_INPUTS,
    IMAGE_OUTPUTS,
    MANIFEST_NAME,
    MANIFEST_SCHEMA,
    TEXT_ENCODER_FILE,
    TEXT_INPUTS,
    TEXT_OUTPUTS,
    open_session,
)

MIN_OPSET = 17
MAX_OPSET = 20  # highest opset of torch's TorchScript exporter
MAX_GRAPH_BYTES = 2**31 - 1  # protobuf limit: larger graphs would need external data files
PARITY_GATED = ("p_fake", "logits")  # the embedding is reported, not gated: it is unnormalised
TRACE_BATCH = 2  # tracing at batch 1 can bake the batch size into reshapes
SYNTHETIC_CROPS = 16
EXPORTER = ("torch.onnx.export (TorchScript tracer, dynamo=False); timm TF-same paddings made constant and "
            "folded into their Conv nodes")

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

# A few prompts covering every prompt level, for the text encoder's parity check.
_PARITY_LABELS = (
    Label.real(),
    Label.fake("entire_synthesis", "diffusion", "stable diffusion 2.1"),
    Label.fake("face_swap", "gan", "simswap"),
    Label.fake("face_edit", "diffusion", "diffusion autoencoder"),
)


@dataclass(frozen=True)
class ParityFigure:
    """Max |onnxruntime - torch| per output of one graph at one batch size."""

    graph: str
    batch: int
    max_abs_diff: dict[str, float]
    gated: tuple[str, ...]
    passed: bool

    @property
    def worst(self) -> float:
        """The largest difference over the gated outputs."""
        return max(self.max_abs_diff[k] for k in self.gated)

    def to_dict(self) -> dict[str, Any]:
        return {"graph": self.graph, "batch": self.batch, "max_abs_diff": dict(self.max_abs_diff),
                "gated": list(self.gated), "passed": self.passed}


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


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and how closely onnxruntime reproduces torch."""

    out_dir: str
    manifest: str
    image_encoder: str
    text_encoder: str | None
    opset: int
    tol: float
    checkpoint_sha256: str
    parity_inputs: str  # "synthetic" or "calibration"
    parity: tuple[ParityFigure, ...]
    variants: tuple[VariantFigure, ...] = field(default=())

    @property
    def max_parity_diff(self) -> float:
        """Worst gated |onnxruntime - torch| over every graph and batch size."""
        return max(f.worst for f in self.parity)

    def variant(self, name: str) -> VariantFigure | None:
        return next((v for v in self.variants if v.variant == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir, "manifest": self.manifest, "image_encoder": self.image_encoder,
            "text_encoder": self.text_encoder, "opset": self.opset, "checkpoint_sha256": self.checkpoint_sha256,
            "parity": {"tol": self.tol, "inputs": self.parity_inputs, "max_abs_diff": self.max_parity_diff,
                       "figures": [f.to_dict() for f in self.parity]},
            "variants": {v.variant: v.to_dict() for v in self.variants},
        }


class TextEncoder(nn.Module):
    """Export graph of the text tower: int64 tokens (B, context) -> unnormalised text features (B, D)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)


class _Fp32IO(nn.Module):
    """A half-precision image encoder behind float32 inputs and outputs (the manifest's contract)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, image: torch.Tensor, noise: torch.Tensor):
        return tuple(o.float() for o in self.encoder(image.half(), noise.half()))


def synthetic_face_crops(n: int, size: int = 224, seed: int = 0) -> list[np.ndarray]:
    """``n`` deterministic face-like RGB uint8 crops: a shaded skin oval with eyes and mouth on a textured
    background, with sensor-like noise, so both branches see realistic value ranges and texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    crops = []
    for _ in range(n):
        img = rng.uniform(30, 210, 3) + rng.uniform(-60, 60, 3) * yy[..., None]
        img = img + 12 * np.sin(xx * rng.uniform(10, 40))[..., None]  # background texture
        cx, cy = 0.5 + rng.uniform(-0.05, 0.05), 0.52 + rng.uniform(-0.04, 0.04)
        ax, ay = rng.uniform(0.26, 0.34), rng.uniform(0.34, 0.42)
        r2 = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2
        skin = rng.uniform((150, 100, 80), (235, 190, 160))
        face = r2 <= 1
        img[face] = (skin * (1 - 0.3 * r2[..., None]))[face]
        for ex in (cx - 0.4 * ax, cx + 0.4 * ax):
            eye = ((xx - ex) / (0.18 * ax)) ** 2 + ((yy - cy + 0.2 * ay) / (0.08 * ay)) ** 2 <= 1
            img[eye] = rng.uniform(10, 70, 3)
        mouth = ((xx - cx) / (0.35 * ax)) ** 2 + ((yy - cy - 0.45 * ay) / (0.07 * ay)) ** 2 <= 1
        img[mouth] = skin * (0.6, 0.35, 0.35)
        img = img + rng.normal(0.0, rng.uniform(2, 8), img.shape)
        crops.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    return crops


def export_model(
    checkpoint: str,
    out_dir: str,
    *,
    opset: int = 17,
    fp16: bool = False,
    int8: bool = False,
    text: bool | None = None,
    parity_batches: Sequence[int] = (1, 3, 8),
    tol: float = 1e-4,
    calib_images: list[np.ndarray] | None = None,
    calib_labels: Sequence[int] | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Export ``checkpoint`` into the folder ``out_dir``; returns paths and parity figures.

    ``text``: None exports the text encoder when the checkpoint has its text tower, True requires it,
    False skips it. ``calib_images``: RGB uint8 face crops of the checkpoint's input size, used for the
    parity check and the int8/fp16 comparison (default: synthetic face-like crops); ``calib_labels``
    (0 real, 1 fake) add the AUC change of each variant. Parity: max |onnxruntime - torch| over p_fake
    and logits must be <= ``tol`` at every batch size in ``parity_batches``, or nothing is written.
    """
    out = Path(out_dir).expanduser().absolute()
    _check_options(opset, parity_batches, tol)
    _check_target(out, overwrite, Path(checkpoint))
    fp16_method = _fp16_method() if fp16 else None  # fail before any work when fp16 cannot be made
    model, meta = load_checkpoint(checkpoint, device="cpu")
    meta.decision_threshold(), meta.input_spec()  # no decision rule, no export: fail before the work
    if text is True and model.text is None:
        raise MfclipError(
            f"{checkpoint} was saved without its text tower, so there is no text encoder to export; "
            f"drop the text option (or --no-text)."
        )
    with_text = model.text is not None and text is not False
    pre = model.cfg.preprocess
    crops, source = _calibration_crops(calib_images, pre, max(parity_batches))
    labels = _calibration_labels(calib_labels, calib_images)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        encoder = ImageEncoder(model).eval()
        image_path = tmp / IMAGE_ENCODER_FILES["fp32"]
        image, noise = prepare_batch(_take(crops, TRACE_BATCH), pre)
        example = (torch.from_numpy(image), torch.from_numpy(noise))
        _export_graph(static_same_padding(encoder, example), example, image_path, IMAGE_INPUTS, IMAGE_OUTPUTS,
                      opset)
        fold_pads_into_convs(image_path)
        parity = _image_parity(encoder, image_path, crops, parity_batches, pre, tol)
        text_path = None
        if with_text:
            text_path = tmp / TEXT_ENCODER_FILE
            text_encoder = TextEncoder(model.text).eval()
            tokens = model.tokenizer(model.prompts_for(_PARITY_LABELS[:TRACE_BATCH]))
            _export_graph(text_encoder, (tokens,), text_path, TEXT_INPUTS, TEXT_OUTPUTS, opset)
            parity += _text_parity(model, text_encoder, text_path, parity_batches, tol)
        _raise_on_parity_failure(parity, tol, source)

        reference = _torch_reference(encoder, crops, pre)
        variants: list[VariantFigure] = []
        if int8:
            variants.append(_export_int8(image_path, tmp / IMAGE_ENCODER_FILES["int8"], crops, pre,
                                         reference, labels))
        if fp16_method is not None:
            variants.append(_export_fp16(fp16_method, model, image_path, tmp / IMAGE_ENCODER_FILES["fp16"],
                                         crops, pre, reference, labels, opset))

        manifest = _manifest(model, meta, tmp, opset, tol, source, len(crops), parity, variants, text_path)
        atomic_write_json(tmp / MANIFEST_NAME, manifest)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    def final(p: Path | None) -> str | None:
        return None if p is None else str(out / p.name)

    return ExportResult(
        out_dir=str(out), manifest=str(out / MANIFEST_NAME), image_encoder=str(out / image_path.name),
        text_encoder=final(text_path), opset=opset, tol=tol, checkpoint_sha256=meta.sha256,
        parity_inputs=source, parity=tuple(parity),
        variants=tuple(replace(v, path=str(out / Path(v.path).name)) for v in variants),
    )


# --- checks before any work ---------------------------------------------------------------------------

def _check_options(opset: int, parity_batches: Sequence[int], tol: float) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise MfclipError(f"--opset {opset} is not supported; use {MIN_OPSET}..{MAX_OPSET}")
    if not parity_batches or any(int(b) < 1 for b in parity_batches):
        raise MfclipError(f"parity batch sizes must be positive integers, got {list(parity_batches)}")
    if not np.isfinite(tol):
        raise MfclipError(f"parity tolerance must be a finite number, got {tol}")


def _check_target(out: Path, overwrite: bool, checkpoint: Path) -> None:
    """Refuse a target that is a file, a non-empty folder (unless overwrite), or would hold the checkpoint."""
    if not out.exists():
        return
    if not out.is_dir():
        raise MfclipError(f"--out {out} is a file; the export needs a folder path")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise MfclipError(
            f"--out {out} already exists and is not empty; pass --overwrite to replace it or choose another folder"
        )
    if not (out / MANIFEST_NAME).is_file():
        raise MfclipError(
            f"refusing to replace {out}: it is not an `mfclip export` folder (no {MANIFEST_NAME}); "
            f"choose an empty or new folder"
        )
    if checkpoint.expanduser().absolute().is_relative_to(out):
        raise MfclipError(f"the checkpoint {checkpoint} is inside --out {out}, which --overwrite would delete")


def _fp16_method() -> str:
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


def _calibration_crops(images: list[np.ndarray] | None, pre: PreprocessConfig,
                       at_least: int) -> tuple[list[np.ndarray], str]:
    if images is None:
        return synthetic_face_crops(max(at_least, SYNTHETIC_CROPS), pre.size), "synthetic"
    if len(images) == 0:
        raise MfclipError("no calibration images were given; pass face crops or leave them out")
    want = (pre.size, pre.size, 3)
    for i, img in enumerate(images):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.shape != want:
            got = f"{img.dtype} {tuple(img.shape)}" if isinstance(img, np.ndarray) else type(img).__name__
            raise MfclipError(
                f"calibration image {i} is {got}; export needs RGB uint8 face crops of shape {want} "
                f"(the checkpoint's input size, cropped with its crop policy)"
            )
    return list(images), "calibration"


def _calibration_labels(labels: Sequence[int] | None, images: list[np.ndarray] | None) -> np.ndarray | None:
    if labels is None:
        return None
    if images is None or len(labels) != len(images):
        raise MfclipError("calibration labels need calibration images, one label (0 real, 1 fake) per image")
    y = np.asarray(labels)
    if not np.all((y == 0) | (y == 1)):
        raise MfclipError("calibration labels must be 0 (real) or 1 (fake)")
    return y.astype(np.int64)


def _take(items: list, n: int) -> list:
    """The first ``n`` items, cycling when there are fewer."""
    return [items[i % len(items)] for i in range(n)]


# --- export and parity --------------------------------------------------------------------------------

def _export_graph(module: nn.Module, args: tuple, path: Path, inputs: Sequence[str], outputs: Sequence[str],
                  opset: int) -> None:
    """Trace ``module`` into a single-file ONNX graph with a dynamic batch axis, and check it."""
    import onnx

    with warnings.catch_warnings():
        # Tracer warnings come from shape assertions (nn.MultiheadAttention); the parity check at several
        # batch sizes is what proves the graph did not freeze a shape.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=r"The feature will be removed.*")
        # F.pad's widths go through a reversing Slice torch does not fold; fold_pads_into_convs does.
        warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1 can be constant folded.*")
        # open_clip pools text at tokens.argmax(-1): the indices are never negative.
        warnings.filterwarnings("ignore", message=r"Exporting aten::index operator of advanced indexing.*")
        # Without grad, nn.MultiheadAttention (open_clip towers) takes its fused fast path,
        # aten::_native_multi_head_attention, which has no ONNX symbolic: trace the plain ops instead.
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with torch.no_grad():
                torch.onnx.export(
                    module, args, str(path), dynamo=False, opset_version=opset,
                    input_names=list(inputs), output_names=list(outputs),
                    dynamic_axes={name: {0: "batch"} for name in (*inputs, *outputs)},
                    do_constant_folding=True, training=torch.onnx.TrainingMode.EVAL,
                )
        except Exception as exc:  # the exporter raises many types for unsupported ops
            raise MfclipError(
                f"torch.onnx could not export {path.name} at opset {opset} "
                f"({type(exc).__name__}: {str(exc)[:300]})"
            ) from exc
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
    size = path.stat().st_size
    if size > MAX_GRAPH_BYTES:
        raise MfclipError(f"{path.name} is {size / 2**30:.2f} GiB; a single-file ONNX graph must stay under 2 GB")
    model = onnx.load(str(path), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise MfclipError(f"{path.name} was written with external data; mfclip ships single-file graphs only")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise MfclipError(f"{path.name} fails the ONNX checker: {str(exc)[:300]}") from exc


class _StaticSameConv(nn.Module):
    """A TF-"same" convolution whose padding was worked out once for its (fixed) input size."""

    def __init__(self, conv: nn.Conv2d, pads: tuple[int, int, int, int]):
        super().__init__()
        self.conv = conv
        self.pads = pads  # F.pad order: left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        left, right, top, bottom = self.pads
        if left == right and top == bottom:
            return F.conv2d(x, c.weight, c.bias, c.stride, (top, left), c.dilation, c.groups)
        return F.conv2d(F.pad(x, self.pads), c.weight, c.bias, c.stride, 0, c.dilation, c.groups)


def static_same_padding(encoder: nn.Module, example: tuple[torch.Tensor, ...]) -> nn.Module:
    """A copy of ``encoder`` whose timm ``Conv2dSame`` layers pad by constants for the example's input size.

    Conv2dSame computes its padding from the input's shape at run time, which traces into a Shape ->
    Gather -> Ceil -> ... -> Pad subgraph per layer. onnxruntime cannot fold that Pad into the Conv, so its
    CPU kernels leave their blocked memory layout around every such Pad: on the effnet-lite0 encoder the 5
    Pads and their layout reorders took ~20 % of the run time. The graph's inputs have fixed height and
    width, so constant pads are exact; the parity check compares the copy's graph with the original.
    """
    try:
        from timm.layers import Conv2dSame
        from timm.layers.padding import get_same_padding
    except ImportError:  # towers without timm have no dynamic padding
        return encoder
    if not any(isinstance(m, Conv2dSame) for m in encoder.modules()):
        return encoder
    import copy

    model = copy.deepcopy(encoder)
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:])))
             for name, m in model.named_modules() if isinstance(m, Conv2dSame)]  # fmt: skip
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    for name, (h, w) in sizes.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        conv = getattr(parent, attr)
        ph = get_same_padding(h, conv.kernel_size[0], conv.stride[0], conv.dilation[0])
        pw = get_same_padding(w, conv.kernel_size[1], conv.stride[1], conv.dilation[1])
        setattr(parent, attr, _StaticSameConv(conv, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)))
    return model


def fold_pads_into_convs(path: Path) -> int:
    """Rewrite the ONNX graph at ``path`` so that every zero ``Pad`` of constant width feeding only a
    ``Conv`` becomes that Conv's own (possibly asymmetric) ``pads``; returns how many were folded.

    onnxruntime (1.32) does not do this itself, and a separate Pad costs its CPU convolutions two layout
    reorders: folding them is what makes :func:`static_same_padding` pay off.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producer = {o: n for n in graph.node for o in n.output}
    graph_outputs = {o.name for o in graph.output}
    dropped = set()
    for pad in graph.node:
        if pad.op_type != "Pad" or pad.output[0] in graph_outputs:
            continue
        users = consumers.get(pad.output[0], [])
        if len(users) != 1 or users[0].op_type != "Conv" or users[0].input[0] != pad.output[0]:
            continue
        conv = users[0]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pad.attribute}
        mode = attrs.get("mode", b"constant")
        pads = _constant_input(model, producer, pad.input[1], consts) if len(pad.input) > 1 else None
        value = (_constant_input(model, producer, pad.input[2], consts) if len(pad.input) > 2 and pad.input[2]
                 else np.zeros(1))  # fmt: skip
        conv_attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
        if (mode != b"constant" or pads is None or pads.shape != (8,) or value is None or np.any(value != 0)
                or len(pad.input) > 3 or pads[[0, 1, 4, 5]].any() or (pads < 0).any()
                or conv_attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"")):
            continue
        own = list(conv_attrs.get("pads", [0, 0, 0, 0]))
        folded = [own[0] + int(pads[2]), own[1] + int(pads[3]), own[2] + int(pads[6]), own[3] + int(pads[7])]
        for a in list(conv.attribute):
            if a.name == "pads":
                conv.attribute.remove(a)
        conv.attribute.append(onnx.helper.make_attribute("pads", folded))
        conv.input[0] = pad.input[0]
        dropped.add(id(pad))
    if dropped:
        keep = [n for n in graph.node if id(n) not in dropped]
        del graph.node[:]
        graph.node.extend(keep)
        _drop_dead_nodes(graph)
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    return len(dropped)


def _constant_input(model, producer: dict, name: str, consts: dict[str, np.ndarray]) -> np.ndarray | None:
    """The value of tensor ``name`` when it depends on constants only (torch traces F.pad's widths into
    a Constant -> Concat -> Reshape -> Slice -> ... -> Cast chain), evaluated with onnx's reference
    runtime; None when a graph input feeds it."""
    if name in consts:
        return consts[name]
    import onnx
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    needed, stack = [], [name]
    seen: set[str] = set()
    while stack:
        t = stack.pop()
        if t in seen or t in consts or not t:
            continue
        seen.add(t)
        node = producer.get(t)
        if node is None:  # a graph input
            return None
        needed.append(node)
        stack.extend(node.input)
    ids = {id(n) for n in needed}
    order = [n for n in graph.node if id(n) in ids]  # graph order is topological
    inits = [onnx.numpy_helper.from_array(v, k) for k, v in consts.items()
             if any(k in n.input for n in order)]  # fmt: skip
    sub = onnx.helper.make_graph(order, "constant", [], [onnx.helper.make_value_info(name, onnx.TypeProto())],
                                 initializer=inits)  # fmt: skip
    try:
        value = ReferenceEvaluator(onnx.helper.make_model(sub, opset_imports=model.opset_import)).run(None, {})[0]
    except Exception:  # noqa: BLE001 - an op the reference runtime lacks: leave that Pad alone
        return None
    consts[name] = np.asarray(value)
    return consts[name]


def _drop_dead_nodes(graph) -> None:
    """Remove nodes none of whose outputs reach a graph output (what folding a Pad leaves behind)."""
    live = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in live for o in node.output):
            keep.append(node)
            live.update(i for i in node.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input}
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _run_session(session, feeds: dict[str, np.ndarray], what: str) -> list[np.ndarray]:
    try:
        return session.run(None, feeds)
    except Exception as exc:  # ORT errors: a shape frozen at trace time, an unsupported op
        shapes = {k: tuple(v.shape) for k, v in feeds.items()}
        raise MfclipError(f"onnxruntime failed on {what} with inputs {shapes}: {str(exc)[:300]}") from exc


def _torch_image_outputs(encoder: nn.Module, image: np.ndarray, noise: np.ndarray) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        outs = encoder(torch.from_numpy(image), torch.from_numpy(noise))
    return {name: o.float().numpy() for name, o in zip(IMAGE_OUTPUTS, outs)}


def _compare(graph: str, batch: int, got: dict[str, np.ndarray], ref: dict[str, np.ndarray],
             gated: tuple[str, ...], tol: float) -> ParityFigure:
    for name, expected in ref.items():
        if got[name].shape != expected.shape:
            raise MfclipError(
                f"{graph}.onnx returned {name} of shape {got[name].shape} at batch {batch}, torch "
                f"{expected.shape}: the graph did not keep a dynamic batch axis"
            )
    diffs = {name: float(np.max(np.abs(got[name].astype(np.float64) - r))) for name, r in ref.items()}
    passed = all(diffs[k] <= tol for k in gated)  # NaN compares False: a NaN output fails
    return ParityFigure(graph, batch, diffs, gated, passed)


def _image_parity(encoder: nn.Module, path: Path, crops: list[np.ndarray], batches: Sequence[int],
                  pre: PreprocessConfig, tol: float) -> list[ParityFigure]:
    session, _ = open_session(path, "cpu")
    # torch runs once on the largest batch: its per-sample outputs do not depend on the batch (up to
    # ~1e-7); the graph is run at every batch size, which is what could break.
    image, noise = prepare_batch(_take(crops, max(int(b) for b in batches)), pre)
    torch_out = _torch_image_outputs(encoder, image, noise)
    figures = []
    for b in map(int, batches):
        feeds = {"image": image[:b], "noise": noise[:b]}
        got = dict(zip(IMAGE_OUTPUTS, _run_session(session, feeds, path.name)))
        ref = {k: v[:b] for k, v in torch_out.items()}
        figures.append(_compare("image_encoder", b, got, ref, PARITY_GATED, tol))
    return figures


def _text_parity(model: MFCLIP, encoder: nn.Module, path: Path, batches: Sequence[int],
                 tol: float) -> list[ParityFigure]:
    session, _ = open_session(path, "cpu")
    figures = []
    for b in batches:
        tokens = model.tokenizer(_take(model.prompts_for(_PARITY_LABELS), int(b)))
        with torch.inference_mode():
            ref = {"text_features": encoder(tokens).float().numpy()}
        (feats,) = _run_session(session, {"tokens": tokens.numpy().astype(np.int64)}, path.name)
        figures.append(_compare("text_encoder", int(b), {"text_features": feats}, ref, TEXT_OUTPUTS, tol))
    return figures


def _raise_on_parity_failure(parity: list[ParityFigure], tol: float, source: str) -> None:
    failed = [f for f in parity if not f.passed]
    if failed:
        lines = "; ".join(
            f"{f.graph} batch {f.batch}: " + ", ".join(f"{k} {f.max_abs_diff[k]:.3g}" for k in f.gated)
            for f in failed
        )
        raise MfclipError(
            f"the exported graph does not reproduce torch within {tol:g} on {source} crops ({lines}); "
            f"nothing was written. Report this with the checkpoint's preset; a looser tolerance hides it."
        )


# --- reduced-precision variants -----------------------------------------------------------------------

def _chunks(crops: list[np.ndarray], pre: PreprocessConfig, size: int = 8):
    for start in range(0, len(crops), size):
        yield prepare_batch(crops[start : start + size], pre)


def _torch_reference(encoder: nn.Module, crops: list[np.ndarray], pre: PreprocessConfig) -> dict[str, np.ndarray]:
    parts = [_torch_image_outputs(encoder, image, noise) for image, noise in _chunks(crops, pre)]
    return {k: np.concatenate([p[k] for p in parts]) for k in ("p_fake", "logits")}


def _variant_figure(variant: str, path: Path, method: str, settings: dict[str, Any], crops: list[np.ndarray],
                    pre: PreprocessConfig, reference: dict[str, np.ndarray], labels: np.ndarray | None,
                    device: str = "cpu") -> VariantFigure:
    session, _ = open_session(path, device)
    scores, logits = [], []
    for image, noise in _chunks(crops, pre):
        p, lg, _ = _run_session(session, {"image": image, "noise": noise}, path.name)
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


def _export_int8(fp32_path: Path, path: Path, crops: list[np.ndarray], pre: PreprocessConfig,
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


def _export_fp16(method: str, model: MFCLIP, fp32_path: Path, path: Path, crops: list[np.ndarray],
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

        half_encoder = _Fp32IO(ImageEncoder(copy.deepcopy(model).half().cuda().eval())).eval()
        image, noise = prepare_batch(_take(crops, TRACE_BATCH), pre)
        args = (torch.from_numpy(image).cuda(), torch.from_numpy(noise).cuda())
        _export_graph(half_encoder, args, path, IMAGE_INPUTS, IMAGE_OUTPUTS, opset)
        device = "auto"  # CUDA when onnxruntime-gpu works, else CPU (reported in the figure's settings)
    return _variant_figure("fp16", path, method, {"io": "float32"}, crops, pre, reference, labels, device)


# --- manifest and publishing --------------------------------------------------------------------------

_INPUT_NOTES = {
    "image": "RGB face crop, NCHW, (x/255 - preprocess.mean) / preprocess.std",
    "noise": "the crop's least GLCM-homogeneous patch of a preprocess.grid^2 grid, RGB NCHW in [0, 1]",
    "tokens": "open_clip token ids (int64), context length padded with 0",
}


def _graph_entry(path: Path) -> dict[str, Any]:
    """File, size, hash and IO (names, dtypes, shapes with 'batch' for the dynamic axis) read from the graph."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def spec(value) -> dict[str, Any]:
        t = value.type.tensor_type
        entry = {
            "name": value.name,
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
            "shape": [d.dim_param or d.dim_value for d in t.shape.dim],
        }
        if value.name in _INPUT_NOTES:
            entry["meaning"] = _INPUT_NOTES[value.name]
        return entry

    return {
        "file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path),
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "inputs": [spec(v) for v in model.graph.input],
        "outputs": [spec(v) for v in model.graph.output],
    }


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"mfclip": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def _manifest(model: MFCLIP, meta: CheckpointMeta, folder: Path, opset: int, tol: float, source: str,
              n_images: int, parity: list[ParityFigure], variants: list[VariantFigure],
              text_path: Path | None) -> dict[str, Any]:
    cfg = model.cfg
    image = {"fp32": _graph_entry(folder / IMAGE_ENCODER_FILES["fp32"])}
    for v in variants:
        image[v.variant] = {**_graph_entry(Path(v.path)), "vs_torch_fp32": v.to_dict()}
    text = None
    if text_path is not None:
        text = {**_graph_entry(text_path),
                "tokenizer": {"kind": type(model.tokenizer).__name__, "clip_arch": cfg.clip_arch}}
    facts = meta.manifest_entries()
    return {
        "schema": MANIFEST_SCHEMA,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "checkpoint": facts.pop("checkpoint"),
        "model": {"embed_dim": model.embed_dim, "branches": cfg.branches, "fusion": cfg.fusion,
                  "include_text": text is not None},
        **facts,
        "opset": opset,
        "exporter": EXPORTER,
        "versions": _versions(),
        "image_encoder": image,
        "text_encoder": text,
        "parity": {"tol": tol, "inputs": source, "images": n_images, "device": "cpu",
                   "figures": [f.to_dict() for f in parity]},
    }


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; an existing ``out`` is swapped out first, then deleted."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
