"""`mfclip export` orchestration: checks, the temporary folder, parity gate, variants, manifest, rename."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MfclipError
from ..events import EventHook, no_event
from ..fsutil import atomic_write_json
from ..model.checkpoint import load_checkpoint
from ..model.mfclip import ImageEncoder
from ..model.preprocess import prepare_batch
from ..runtime.onnx_backend import (
    IMAGE_ENCODER_FILES,
    IMAGE_INPUTS,
    IMAGE_OUTPUTS,
    MANIFEST_NAME,
    TEXT_ENCODER_FILE,
    TEXT_INPUTS,
    TEXT_OUTPUTS,
)
from .graph import (
    MAX_OPSET,
    MIN_OPSET,
    TRACE_BATCH,
    TextEncoder,
    export_graph,
    fold_pads_into_convs,
    static_same_padding,
)
from .inputs import calibration_crops, calibration_labels, take
from .manifest import build_manifest
from .parity import PARITY_LABELS, ParityFigure, image_parity, raise_on_parity_failure, text_parity
from .variants import VariantFigure, choose_fp16_method, export_fp16, export_int8, torch_reference


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

    def to_json(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir, "manifest": self.manifest, "image_encoder": self.image_encoder,
            "text_encoder": self.text_encoder, "opset": self.opset, "checkpoint_sha256": self.checkpoint_sha256,
            "parity": {"tol": self.tol, "inputs": self.parity_inputs, "max_abs_diff": self.max_parity_diff,
                       "figures": [f.to_dict() for f in self.parity]},
            "variants": {v.variant: v.to_dict() for v in self.variants},
        }


@dataclass(frozen=True)
class ExportOptions:
    """What `mfclip export` is asked: the checkpoint, the folder to write, and how the graphs are made and checked.

    ``text``: None exports the text encoder when the checkpoint has its text tower, True requires it, False
    skips it. ``calib_images``: RGB uint8 face crops of the checkpoint's input size, used for the parity check
    and the int8/fp16 comparison (default: synthetic face-like crops); ``calib_labels`` (0 real, 1 fake) add
    the AUC change of each variant. Parity: max |onnxruntime - torch| over p_fake and logits must be <= ``tol``
    at every batch size in ``parity_batches``, or nothing is written.
    """

    checkpoint: str
    out_dir: str
    opset: int = 17
    fp16: bool = False
    int8: bool = False
    text: bool | None = None
    parity_batches: tuple[int, ...] = (1, 3, 8)
    tol: float = 1e-4
    calib_images: list[np.ndarray] | None = field(default=None, repr=False, compare=False)
    calib_labels: Sequence[int] | None = field(default=None, repr=False, compare=False)
    overwrite: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "parity_batches", tuple(self.parity_batches))


def run_export(opts: ExportOptions, *, on_event: EventHook = no_event) -> ExportResult:
    """Export ``opts.checkpoint`` into the folder ``opts.out_dir``; returns paths and parity figures.

    Events: "step" ``{"what": ...}`` as each stage starts (image encoder, text encoder, int8, fp16, manifest).
    """
    checkpoint, opset, tol, parity_batches = opts.checkpoint, opts.opset, opts.tol, opts.parity_batches
    calib_images, text = opts.calib_images, opts.text
    out = Path(opts.out_dir).expanduser().absolute()
    _check_options(opset, parity_batches, tol)
    _check_target(out, opts.overwrite, Path(checkpoint))
    fp16_method = choose_fp16_method() if opts.fp16 else None  # fail before any work when fp16 cannot be made
    model, meta = load_checkpoint(checkpoint, device="cpu")
    meta.decision_threshold(), meta.input_spec()  # no decision rule, no export: fail before the work
    if text is True and model.text is None:
        raise MfclipError(
            f"{checkpoint} was saved without its text tower, so there is no text encoder to export; "
            f"drop the text option (or --no-text)."
        )
    with_text = model.text is not None and text is not False
    pre = model.cfg.preprocess
    crops, source = calibration_crops(calib_images, pre, max(parity_batches))
    labels = calibration_labels(opts.calib_labels, calib_images)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        on_event("step", {"what": "image encoder"})
        encoder = ImageEncoder(model).eval()
        image_path = tmp / IMAGE_ENCODER_FILES["fp32"]
        image, noise = prepare_batch(take(crops, TRACE_BATCH), pre)
        example = (torch.from_numpy(image), torch.from_numpy(noise))
        export_graph(static_same_padding(encoder, example), example, image_path, IMAGE_INPUTS, IMAGE_OUTPUTS,
                      opset)
        fold_pads_into_convs(image_path)
        parity = image_parity(encoder, image_path, crops, parity_batches, pre, tol)
        text_path = None
        if with_text:
            on_event("step", {"what": "text encoder"})
            text_path = tmp / TEXT_ENCODER_FILE
            text_encoder = TextEncoder(model.text).eval()
            tokens = model.tokenizer(model.prompts_for(PARITY_LABELS[:TRACE_BATCH]))
            export_graph(text_encoder, (tokens,), text_path, TEXT_INPUTS, TEXT_OUTPUTS, opset)
            parity += text_parity(model, text_encoder, text_path, parity_batches, tol)
        raise_on_parity_failure(parity, tol, source)

        reference = torch_reference(encoder, crops, pre)
        variants: list[VariantFigure] = []
        if opts.int8:
            on_event("step", {"what": "int8"})
            variants.append(export_int8(image_path, tmp / IMAGE_ENCODER_FILES["int8"], crops, pre,
                                         reference, labels))
        if fp16_method is not None:
            on_event("step", {"what": "fp16"})
            variants.append(export_fp16(fp16_method, model, image_path, tmp / IMAGE_ENCODER_FILES["fp16"],
                                         crops, pre, reference, labels, opset))

        on_event("step", {"what": "manifest"})
        manifest = build_manifest(model, meta, tmp, opset, tol, source, len(crops), parity, variants, text_path)
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
