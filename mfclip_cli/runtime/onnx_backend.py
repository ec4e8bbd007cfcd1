"""ONNX Runtime inference from a folder written by `mfclip export` (manifest.json + image_encoder*.onnx).

The folder layout and manifest keys are defined here, once; ``mfclip_cli.export`` writes what this reads.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..cpus import usable_cpus
from ..errors import MfclipError
from ..fsutil import sha256_file
from ..model.metadata import CheckpointMeta
from . import BackendInfo

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = "mfclip.onnx/1"
# Image-encoder graph of each variant; every variant has the same inputs and outputs.
IMAGE_ENCODER_FILES: dict[str, str] = {
    "fp32": "image_encoder.onnx",
    "int8": "image_encoder.int8.onnx",
    "fp16": "image_encoder.fp16.onnx",
}
TEXT_ENCODER_FILE = "text_encoder.onnx"
IMAGE_INPUTS: tuple[str, str] = ("image", "noise")
IMAGE_OUTPUTS: tuple[str, str, str] = ("p_fake", "logits", "embedding")
TEXT_INPUTS: tuple[str] = ("tokens",)
TEXT_OUTPUTS: tuple[str] = ("text_features",)

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
_REEXPORT = "Re-run `mfclip export CHECKPOINT --out DIR` to write it again."

log = logging.getLogger(__name__)


def session_options(threads: int | None = None):
    """onnxruntime SessionOptions used for inference and for export's parity check: all graph
    optimisations, ``threads`` (default: every CPU this process may use) intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or usable_cpus())
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: provider fall-back is reported by us, once
    # Idle intra-op threads sleep instead of spinning: in scan the classifier shares the cores with the
    # decode/detect workers, and spinning threads took their CPU (>= 768 px images: 15.9 -> 23.8 images/s
    # end to end on 2 cores; the classifier alone is as fast either way).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def read_manifest(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an exported model folder; a missing or unreadable one is an MfclipError."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise MfclipError(
            f"exported model folder {folder} does not exist (or is not a folder). "
            f"Pass --model with a folder written by `mfclip export`."
        )
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise MfclipError(f"{path} is missing: {folder} is not a complete `mfclip export` folder. {_REEXPORT}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MfclipError(f"{path} is not readable JSON ({exc}). {_REEXPORT}") from exc
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        found = manifest.get("schema") if isinstance(manifest, dict) else type(manifest).__name__
        raise MfclipError(
            f"{path} has schema {found!r}; this mfclip reads {MANIFEST_SCHEMA!r}. {_REEXPORT}"
        )
    return manifest


def confined_file(folder: Path, name: object, key: str) -> Path:
    """``folder / name`` when it stays inside ``folder`` once resolved; a manifest entry that is absolute,
    climbs out with ``..`` or goes through a symlink leaving the folder is refused before anything is opened."""
    where = folder / MANIFEST_NAME
    if not isinstance(name, str) or not name or "\x00" in name:
        raise MfclipError(f"{where}: {key} must be a file name inside the folder, got {name!r}. {_REEXPORT}")
    if os.path.isabs(name) or ".." in Path(name).parts:
        raise MfclipError(
            f"{where}: {key} {name!r} points outside the model folder (absolute or '..' paths are refused). "
            f"An exported folder only names its own files. {_REEXPORT}"
        )
    root = folder.resolve()
    path = (folder / name).resolve()
    if not path.is_relative_to(root):
        raise MfclipError(
            f"{where}: {key} {name!r} is a symbolic link leading outside the model folder; refused. {_REEXPORT}"
        )
    return folder / name


def parse_device(device: str) -> tuple[str, int]:
    """('auto' | 'cpu' | 'cuda', CUDA device id) from a --device value; unknown names are an error."""
    if device in ("auto", "cpu"):
        return device, 0
    if device == "cuda":
        return "cuda", 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return "cuda", int(device[5:])
    raise MfclipError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N")


def open_session(path: Path, device: str = "auto", threads: int | None = None):
    """(onnxruntime session, device it really runs on) for the graph at ``path``.

    CUDA is used only when the provider is listed, the device allows it, and the session really puts
    CUDA first (onnxruntime silently drops a provider whose libraries fail to load). 'auto' then falls
    back to CPU with a warning; an explicit 'cuda' is an error. A file onnxruntime cannot load is an
    error naming the file.
    """
    import onnxruntime as ort

    kind, index = parse_device(device)
    opts = session_options(threads)
    cuda_problem = None
    if kind != "cpu":
        if _CUDA not in ort.get_available_providers():
            cuda_problem = (
                f"this onnxruntime has no {_CUDA} (providers: {', '.join(ort.get_available_providers())}); "
                f"install mfclip[gpu] for onnxruntime-gpu"
            )
        else:
            try:
                session = ort.InferenceSession(
                    str(path), sess_options=opts, providers=[(_CUDA, {"device_id": index}), _CPU]
                )
                if session.get_providers()[0] == _CUDA:
                    return session, f"cuda:{index}"
                cuda_problem = "onnxruntime fell back to CPU (CUDA or cuDNN libraries could not be loaded)"
            except Exception as exc:  # noqa: BLE001 - ORT raises its own types; a bad file is caught below
                cuda_problem = f"the CUDA session failed ({type(exc).__name__}: {str(exc)[:200]})"
    session = _cpu_session(path, opts)
    if cuda_problem is not None:
        if kind == "cuda":
            raise MfclipError(f"--device {device} was asked for but {cuda_problem}; use --device cpu or auto")
        log.warning("ONNX model %s runs on CPU: %s.", path.name, cuda_problem)
    return session, "cpu"


def _cpu_session(path: Path, opts):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=[_CPU])
    except Exception as exc:  # InvalidProtobuf, Fail, InvalidGraph...: all mean a bad file
        raise MfclipError(
            f"{path} is not a loadable ONNX model ({type(exc).__name__}: {str(exc)[:200]}); the file is "
            f"corrupted or incomplete. {_REEXPORT}"
        ) from exc


class OnnxBackend:
    """Runs the exported image encoder (fp32 or a quantised variant) on onnxruntime."""

    def __init__(self, model_dir: str | os.PathLike, device: str = "auto", threads: int | None = None,
                 variant: str = "fp32"):
        if variant not in IMAGE_ENCODER_FILES:
            raise MfclipError(f"unknown ONNX variant {variant!r}; valid: {', '.join(IMAGE_ENCODER_FILES)}")
        folder = Path(model_dir)
        self.manifest = manifest = read_manifest(folder)
        self.meta = meta = CheckpointMeta.from_manifest(manifest, str(folder / MANIFEST_NAME))
        graph = manifest["image_encoder"].get(variant)
        if graph is None:
            present = ", ".join(manifest.get("image_encoder", {})) or "none"
            flag = {"fp32": "", "int8": " --int8", "fp16": " --fp16"}[variant]
            raise MfclipError(
                f"{folder} has no {variant} image encoder (it holds: {present}). "
                f"Re-run `mfclip export CHECKPOINT --out {folder}{flag} --overwrite`."
            )
        path = confined_file(folder, graph["file"], f"image_encoder.{variant}.file")
        if not path.is_file():
            raise MfclipError(f"{path} is missing from the exported model folder. {_REEXPORT}")
        size = path.stat().st_size
        if graph.get("bytes") is not None and size != int(graph["bytes"]):
            raise MfclipError(
                f"{path} is {size} bytes but the manifest says {graph['bytes']}: the file is truncated or "
                f"was replaced. {_REEXPORT}"
            )
        digest = sha256_file(path)
        if digest != graph["sha256"].lower():
            raise MfclipError(
                f"{path} has sha256 {digest[:16]}… but the manifest records {graph['sha256'][:16]}…: the graph "
                f"was modified or replaced after export, so it is not loaded. {_REEXPORT}"
            )
        self.session, run_device = open_session(path, device, threads)
        names = tuple(i.name for i in self.session.get_inputs())
        if names != IMAGE_INPUTS:
            raise MfclipError(f"{path} has inputs {names}, expected {IMAGE_INPUTS}. {_REEXPORT}")
        self.variant = variant
        spec = meta.input_spec()
        self.info = BackendInfo(
            path=str(folder), sha256=meta.sha256, threshold=meta.decision_threshold().value,
            preprocess=spec.preprocess, crop=spec.crop,
            backend="onnx", device=run_device,
            extra={"variant": variant, "graph": graph["file"], "preset": meta.preset,
                   "providers": self.session.get_providers(), "opset": manifest.get("opset")},
        )

    def outputs(self, image: np.ndarray, noise: np.ndarray) -> dict[str, np.ndarray]:
        """Every graph output for a batch: p_fake (B,), logits (B, 2), embedding (B, D)."""
        feeds = {
            "image": np.ascontiguousarray(image, dtype=np.float32),
            "noise": np.ascontiguousarray(noise, dtype=np.float32),
        }
        return dict(zip(IMAGE_OUTPUTS, self.session.run(list(IMAGE_OUTPUTS), feeds)))

    def predict(self, image: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """P(fake) for a batch: image (B,3,S,S) CLIP-normalised, noise (B,3,S/g,S/g) in [0,1] -> (B,)."""
        feeds = {
            "image": np.ascontiguousarray(image, dtype=np.float32),
            "noise": np.ascontiguousarray(noise, dtype=np.float32),
        }
        (p_fake,) = self.session.run(["p_fake"], feeds)
        return p_fake.astype(np.float64)
