"""`mfclip export`: a checkpoint -> an ONNX model folder, checked against torch before it is kept.

The folder holds ``image_encoder.onnx`` ((image, noise) -> p_fake, logits, embedding), optionally
``text_encoder.onnx`` (tokens -> text_features) and quantised image encoders, and ``manifest.json``
(preprocessing, crop policy, threshold, IO, versions, parity figures). It is written into a temporary
sibling folder and renamed into place only after onnxruntime reproduces torch on real batches, so a
failed export leaves nothing behind. Layout and names: ``mfclip_cli.runtime.onnx_backend``.

Rooms: ``run`` (orchestration: :class:`ExportOptions` in, :func:`run_export`, :class:`ExportResult` out), ``graph`` (tracing and graph surgery), ``parity``
(onnxruntime against torch), ``variants`` (int8 / fp16), ``manifest`` (manifest.json), ``inputs`` (the crops
the checks run on).
"""

from .graph import fold_pads_into_convs, static_same_padding
from .inputs import SYNTHETIC_CROPS, synthetic_face_crops
from .parity import ParityFigure
from .run import ExportOptions, ExportResult, run_export
from .variants import VariantFigure

__all__ = ["SYNTHETIC_CROPS", "ExportOptions", "ExportResult", "ParityFigure", "VariantFigure",
           "fold_pads_into_convs", "run_export", "static_same_padding", "synthetic_face_crops"]
