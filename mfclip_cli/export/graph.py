"""ONNX graph making: the traced encoders, TF-same paddings made static and folded into convolutions."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MfclipError

MIN_OPSET = 17
MAX_OPSET = 20  # highest opset of torch's TorchScript exporter
MAX_GRAPH_BYTES = 2**31 - 1  # protobuf limit: larger graphs would need external data files
TRACE_BATCH = 2  # tracing at batch 1 can bake the batch size into reshapes
EXPORTER = ("torch.onnx.export (TorchScript tracer, dynamo=False); timm TF-same paddings made constant and "
            "folded into their Conv nodes")


class TextEncoder(nn.Module):
    """Export graph of the text tower: int64 tokens (B, context) -> unnormalised text features (B, D)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)


class Fp32IO(nn.Module):
    """A half-precision image encoder behind float32 inputs and outputs (the manifest's contract)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, image: torch.Tensor, noise: torch.Tensor):
        return tuple(o.float() for o in self.encoder(image.half(), noise.half()))


# --- export and parity --------------------------------------------------------------------------------

def export_graph(module: nn.Module, args: tuple, path: Path, inputs: Sequence[str], outputs: Sequence[str],
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
