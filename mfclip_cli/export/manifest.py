"""The export folder's manifest.json: graph entries, versions, and the checkpoint's facts from its CheckpointMeta."""

from __future__ import annotations

import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..fsutil import sha256_file
from ..model.metadata import CheckpointMeta
from ..model.mfclip import MFCLIP
from ..runtime.onnx_backend import (
    IMAGE_ENCODER_FILES,
    MANIFEST_SCHEMA,
)
from .graph import EXPORTER
from .parity import ParityFigure
from .variants import VariantFigure

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


def build_manifest(model: MFCLIP, meta: CheckpointMeta, folder: Path, opset: int, tol: float, source: str,
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
