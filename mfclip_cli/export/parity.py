"""Parity: onnxruntime against torch on the same batches, gated on p_fake and logits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.taxonomy import Label
from ..errors import MfclipError
from ..model.mfclip import MFCLIP
from ..model.preprocess import PreprocessConfig, prepare_batch
from ..runtime.onnx_backend import (
    IMAGE_OUTPUTS,
    TEXT_OUTPUTS,
    open_session,
)
from .inputs import take

PARITY_GATED = ("p_fake", "logits")  # the embedding is reported, not gated: it is unnormalised

# A few prompts covering every prompt level, for the text encoder's parity check.
PARITY_LABELS = (
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


def run_session(session, feeds: dict[str, np.ndarray], what: str) -> list[np.ndarray]:
    try:
        return session.run(None, feeds)
    except Exception as exc:  # ORT errors: a shape frozen at trace time, an unsupported op
        shapes = {k: tuple(v.shape) for k, v in feeds.items()}
        raise MfclipError(f"onnxruntime failed on {what} with inputs {shapes}: {str(exc)[:300]}") from exc


def torch_image_outputs(encoder: nn.Module, image: np.ndarray, noise: np.ndarray) -> dict[str, np.ndarray]:
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


def image_parity(encoder: nn.Module, path: Path, crops: list[np.ndarray], batches: Sequence[int],
                  pre: PreprocessConfig, tol: float) -> list[ParityFigure]:
    session, _ = open_session(path, "cpu")
    # torch runs once on the largest batch: its per-sample outputs do not depend on the batch (up to
    # ~1e-7); the graph is run at every batch size, which is what could break.
    image, noise = prepare_batch(take(crops, max(int(b) for b in batches)), pre)
    torch_out = torch_image_outputs(encoder, image, noise)
    figures = []
    for b in map(int, batches):
        feeds = {"image": image[:b], "noise": noise[:b]}
        got = dict(zip(IMAGE_OUTPUTS, run_session(session, feeds, path.name)))
        ref = {k: v[:b] for k, v in torch_out.items()}
        figures.append(_compare("image_encoder", b, got, ref, PARITY_GATED, tol))
    return figures


def text_parity(model: MFCLIP, encoder: nn.Module, path: Path, batches: Sequence[int],
                 tol: float) -> list[ParityFigure]:
    session, _ = open_session(path, "cpu")
    figures = []
    for b in batches:
        tokens = model.tokenizer(take(model.prompts_for(PARITY_LABELS), int(b)))
        with torch.inference_mode():
            ref = {"text_features": encoder(tokens).float().numpy()}
        (feats,) = run_session(session, {"tokens": tokens.numpy().astype(np.int64)}, path.name)
        figures.append(_compare("text_encoder", int(b), {"text_features": feats}, ref, TEXT_OUTPUTS, tol))
    return figures


def raise_on_parity_failure(parity: list[ParityFigure], tol: float, source: str) -> None:
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
