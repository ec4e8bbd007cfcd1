"""The one place that validates model metadata: checkpoint JSON (safetensors metadata) and ONNX manifests.

Everything that decides a verdict (the threshold, the crop policy, the preprocessing) is checked here before
any consumer (torch and ONNX backends, eval, export) reads it, so a malformed or hostile file is a clear
:class:`~mfclip_cli.errors.CheckpointError` (exit 2), never a traceback or a silent default.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..errors import CheckpointError, MfclipError
from ..faces.types import CropPolicy
from .preprocess import PreprocessConfig

_FIX_CKPT = "Re-save it with `mfclip train` / `mfclip eval --calibrate`, or use another checkpoint."


def parse_meta_json(raw: str, where: str) -> dict[str, Any]:
    """The metadata object in ``raw`` (JSON text); anything but a JSON object is a CheckpointError."""
    try:
        meta = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: its mfclip metadata is not valid JSON ({exc}). {_FIX_CKPT}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{where}: its mfclip metadata is a JSON {type(meta).__name__}, not an object. {_FIX_CKPT}"
        )
    return meta


def check_threshold(value: Any, where: str, fix: str = _FIX_CKPT) -> float:
    """``value`` as a float when it is a finite number in [0, 1]; otherwise a CheckpointError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CheckpointError(f"{where}: the threshold {value!r} is not a finite number. {fix}")
    if not 0.0 <= value <= 1.0:
        raise CheckpointError(
            f"{where}: the threshold {value!r} is outside [0, 1] (scores are probabilities, so it would flag "
            f"{'nothing' if value > 1 else 'everything'}). {fix}"
        )
    return float(value)


def _checkpoint_threshold_value(meta: dict[str, Any]) -> Any:
    thr = meta.get("threshold")
    return thr.get("value") if isinstance(thr, dict) else thr


def _where(meta: dict[str, Any], where: str | None) -> str:
    return where if where is not None else str(meta.get("path", "the checkpoint"))


def checkpoint_threshold(meta: dict[str, Any], where: str | None = None) -> float:
    """The decision threshold recorded in checkpoint metadata (a number, or ``{"value": number, ...}``).

    A checkpoint without one has no decision rule: that is an error, not 0.5. ``where`` names the file in
    errors (default: the ``path`` that load_checkpoint records).
    """
    where = _where(meta, where)
    value = _checkpoint_threshold_value(meta)
    if value is None:
        raise CheckpointError(
            f"{where} records no decision threshold, so it cannot give verdicts. Choose one with "
            f"`mfclip eval {where} --data VAL --calibrate VAL`."
        )
    return check_threshold(value, where)


def threshold_record(meta: dict[str, Any], where: str | None = None) -> dict[str, Any]:
    """How the checkpoint's threshold was chosen, with its checked ``value`` (``method`` "unknown" if unsaid)."""
    thr = meta.get("threshold")
    recorded = dict(thr) if isinstance(thr, dict) else {}
    recorded["value"] = checkpoint_threshold(meta, where)
    recorded.setdefault("method", "unknown")
    return recorded


def checkpoint_crop_policy(meta: dict[str, Any], where: str | None = None) -> CropPolicy:
    """The face-crop policy recorded in checkpoint metadata (``preprocess.crop``); missing is an error."""
    where = _where(meta, where)
    crop = (meta.get("preprocess") or {}).get("crop") if isinstance(meta.get("preprocess"), dict) else None
    if crop is None:
        raise CheckpointError(
            f"{where} records no face-crop policy (preprocess.crop), so its crops cannot be reproduced. "
            f"{_FIX_CKPT}"
        )
    return crop_policy(crop, where)


def crop_policy(data: Any, where: str) -> CropPolicy:
    """A CropPolicy from a metadata dict; wrong types or values are a CheckpointError naming ``where``."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: the crop policy is a {type(data).__name__}, not an object. {_FIX_CKPT}")
    try:
        return CropPolicy.from_dict(data)
    except (MfclipError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: bad crop policy ({exc}). {_FIX_CKPT}") from None


def preprocess_config(data: Any, where: str) -> PreprocessConfig:
    """A PreprocessConfig from a metadata dict; missing keys or wrong types are a CheckpointError."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: preprocess is a {type(data).__name__}, not an object. {_FIX_CKPT}")
    try:
        return PreprocessConfig.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: bad preprocess settings ({type(exc).__name__}: {exc}). {_FIX_CKPT}") from None


def validate_checkpoint_meta(meta: dict[str, Any], where: str) -> dict[str, Any]:
    """``meta`` when its structure is sound: ``model`` an object, and threshold / preprocess / crop valid
    where present (consumers that need them call :func:`checkpoint_threshold` / :func:`checkpoint_crop_policy`)."""
    if not isinstance(meta.get("model"), dict):
        found = "missing" if "model" not in meta else f"a {type(meta['model']).__name__}"
        raise CheckpointError(f"{where}: the metadata's 'model' (architecture) is {found}, not an object. {_FIX_CKPT}")
    if _checkpoint_threshold_value(meta) is not None:
        check_threshold(_checkpoint_threshold_value(meta), where)
    pre = meta.get("preprocess")
    if pre is not None:
        if not isinstance(pre, dict):
            raise CheckpointError(f"{where}: preprocess is a {type(pre).__name__}, not an object. {_FIX_CKPT}")
        if pre.get("crop") is not None:
            crop_policy(pre["crop"], where)
    for key in ("training", "taxonomy"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise CheckpointError(f"{where}: '{key}' is a {type(meta[key]).__name__}, not an object. {_FIX_CKPT}")
    return meta


_REEXPORT = "Re-run `mfclip export CHECKPOINT --out DIR` to write it again."


def validate_manifest(manifest: dict[str, Any], where: str) -> tuple[float, PreprocessConfig, CropPolicy]:
    """(threshold, preprocessing, crop policy) of an ONNX manifest whose required keys and types are right.

    Graph entries are checked for shape here; their paths are confined to the folder by the ONNX backend.
    """

    def fail(what: str) -> CheckpointError:
        return CheckpointError(f"{where}: {what}. {_REEXPORT}")

    for key in ("threshold", "preprocess", "crop", "image_encoder"):
        if manifest.get(key) is None:
            raise fail(f"the manifest has no '{key}'")
    threshold = check_threshold(manifest["threshold"], where, _REEXPORT)
    encoders = manifest["image_encoder"]
    if not isinstance(encoders, dict) or not encoders:
        raise fail("'image_encoder' must be an object of graph entries")
    for variant, entry in encoders.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not entry["file"]:
            raise fail(f"image_encoder.{variant} needs a 'file' name")
        if not isinstance(entry.get("sha256"), str) or len(entry["sha256"]) != 64:
            raise fail(f"image_encoder.{variant} needs the graph's 'sha256' (64 hex digits)")
        if entry.get("bytes") is not None and (isinstance(entry["bytes"], bool) or not isinstance(entry["bytes"], int)):
            raise fail(f"image_encoder.{variant}.bytes must be an integer")
    if manifest.get("checkpoint") is not None and not isinstance(manifest["checkpoint"], dict):
        raise fail("'checkpoint' must be an object")
    return threshold, preprocess_config(manifest["preprocess"], where), crop_policy(manifest["crop"], where)
