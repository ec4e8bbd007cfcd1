"""What travels with a model: one typed record (:class:`CheckpointMeta`) that checkpoints and ONNX manifests
are written from and read into, and the one place that validates them.

Everything that decides a verdict (the threshold, the crop policy, the preprocessing) is checked here before
any consumer (torch and ONNX backends, eval, export) reads it, so a malformed or hostile file is a clear
:class:`~mfclip_cli.errors.CheckpointError` (exit 2), never a traceback or a silent default.

On disk (safetensors metadata key ``mfclip``, JSON)::

    {"format_version": 1, "package_version", "dtype": "float32|float16", "model": <ModelConfig>,
     "threshold": {"value", "method", ...}, "preprocess": {<PreprocessConfig>, "crop": <CropPolicy>},
     "training": {"protocol", "split", "data", "seed", ..., "best_epoch", "val", "file_hashes16"},
     "taxonomy": {"generators": [...]}}

The preprocessing the model uses is its config's (``model.preprocess``); the copy beside the crop policy is
written for readers of the file and not read back.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, MfclipError
from ..faces.types import CropPolicy
from .config import ModelConfig
from .preprocess import PreprocessConfig

FORMAT_VERSION = 1
_FIX_CKPT = "Re-save it with `mfclip train` / `mfclip eval --calibrate`, or use another checkpoint."
_REEXPORT = "Re-run `mfclip export CHECKPOINT --out DIR` to write it again."


@dataclass(frozen=True)
class ThresholdRecord:
    """A decision threshold and how it was chosen: what a checkpoint, a manifest and an eval report carry.

    ``method`` is how it was chosen ("eer", "target_fpr", or free text from older checkpoints; "unknown" when
    unsaid). The figures measured when choosing it (``eer``; ``target_fpr``, ``fpr``, ``tpr``) and, for a
    recalibrated checkpoint, the calibration data and the ``previous`` record come along. ``source`` says
    where a report got the threshold ("checkpoint" | "calibrated"); checkpoints do not record it.
    Keys this version does not know are kept in ``extra``, so rewriting a checkpoint loses nothing.
    """

    value: float
    method: str = "unknown"
    eer: float | None = None
    target_fpr: float | None = None
    fpr: float | None = None
    tpr: float | None = None
    data: str | None = None
    n_real: int | None = None
    n_fake: int | None = None
    standardize: bool | None = None
    previous: ThresholdRecord | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The record as JSON: set figures only (a target-FPR ``tpr`` and a calibration's ``previous`` even when
        null, as they have always been written)."""
        out: dict[str, Any] = {"value": self.value, "method": self.method}
        for f in fields(self)[2:]:
            v = getattr(self, f.name)
            if f.name == "extra":
                out.update(v)
            elif f.name == "previous":
                if v is not None or self.data is not None:
                    out["previous"] = None if v is None else v.to_json()
            elif v is not None or (f.name == "tpr" and self.method == "target_fpr"):
                out[f.name] = v
        return out

    @staticmethod
    def from_json(data: dict[str, Any]) -> ThresholdRecord:
        """A record from :meth:`to_json` output (``value`` must already be a checked number)."""
        known = {f.name for f in fields(ThresholdRecord)} - {"extra"}
        kw = {k: v for k, v in data.items() if k in known}
        kw.setdefault("method", "unknown")
        if kw.get("method") is None:
            kw["method"] = "unknown"
        prev = kw.get("previous")
        if isinstance(prev, dict) and prev.get("value") is not None:
            kw["previous"] = ThresholdRecord.from_json(prev)
        elif prev is not None:
            kw["previous"] = ThresholdRecord(value=prev) if isinstance(prev, (int, float)) else None
        return ThresholdRecord(**kw, extra={k: v for k, v in data.items() if k not in known})


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes model input: the face-crop policy, then the preprocessing of the crop."""

    crop: CropPolicy
    preprocess: PreprocessConfig

    def to_json(self) -> dict[str, Any]:
        """The checkpoint's ``preprocess`` entry: the preprocessing fields plus ``crop``."""
        return {**self.preprocess.to_dict(), "crop": self.crop.to_dict()}


@dataclass(frozen=True)
class TrainingRecord:
    """How a checkpoint was trained (``mfclip train``); the best-epoch fields are absent from ``last`` saves.

    Keys this version does not know are kept in ``extra``.
    """

    protocol: str | None = None
    split: str | None = None
    data: str | None = None
    manifest_sha256: str | None = None
    seed: int | None = None
    package_version: str | None = None
    preset: str | None = None
    val_frac: float | None = None
    test_frac: float | None = None
    augment: str | None = None
    parity: str | None = None
    balance: str | None = None
    pseudo_fakes: str | None = None
    weight_average: str | None = None
    steps_per_epoch: int | None = None
    image_init: str | None = None
    freeze_image: bool | None = None
    teachers: tuple[str, ...] | None = None  # sha256 of each distillation teacher's file (None: no teacher)
    distill_weight: float | None = None
    train_fakes: str | None = None  # "pseudo": the dataset's fakes were held out of training (None: all)
    best_epoch: int | None = None
    val: dict[str, Any] | None = None  # BinaryMetrics.to_dict() of the best epoch on validation
    val_loss: float | None = None
    file_hashes16: tuple[str, ...] | None = None  # content-hash prefixes of train + val files (overlap guard)
    extra: dict[str, Any] = field(default_factory=dict)

    def best(self, *, epoch: int, val: dict[str, Any], val_loss: float,
             file_hashes16: tuple[str, ...]) -> TrainingRecord:
        """This record with the best epoch's figures."""
        return replace(self, best_epoch=epoch, val=val, val_loss=val_loss, file_hashes16=tuple(file_hashes16))

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out = {k: (list(v) if k in ("file_hashes16", "teachers") and v is not None else v) for k, v in out.items()}
        # the best-epoch fields exist only once an epoch improved, the distillation fields only with teachers,
        # train_fakes only when the dataset's fakes were held out; the other run fields are written even when null
        for k in ("best_epoch", "val", "val_loss", "file_hashes16", "teachers", "distill_weight", "train_fakes"):
            if out[k] is None:
                del out[k]
        return {**out, **self.extra}

    @staticmethod
    def from_json(data: dict[str, Any]) -> TrainingRecord:
        known = {f.name for f in fields(TrainingRecord)} - {"extra"}
        kw = {k: v for k, v in data.items() if k in known}
        for k in ("file_hashes16", "teachers"):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        return TrainingRecord(**kw, extra={k: v for k, v in data.items() if k not in known})


@dataclass(frozen=True)
class TaxonomyRecord:
    """The generators a model saw in training (names from ``data.taxonomy``)."""

    generators: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"generators": list(self.generators), **self.extra}

    @staticmethod
    def from_json(data: dict[str, Any]) -> TaxonomyRecord:
        return TaxonomyRecord(tuple(data.get("generators") or ()),
                              {k: v for k, v in data.items() if k != "generators"})


@dataclass(frozen=True)
class Origin:
    """Which file a record was read from (not saved in a checkpoint; the ``checkpoint`` entry of a manifest)."""

    path: str
    sha256: str | None = None
    preset: str | None = None


@dataclass(frozen=True)
class CheckpointMeta:
    """Everything a checkpoint says besides its tensors: written by ``save_checkpoint``, returned by
    ``read_checkpoint_meta`` / ``load_checkpoint``, and the facts an ONNX manifest repeats.

    ``model`` is the architecture (None for a record read from an ONNX manifest, which holds graphs instead);
    ``save_checkpoint`` fills it, ``format_version``, ``package_version`` and ``dtype`` from what it writes.
    Top-level keys this version does not know are kept in ``extra``.
    """

    threshold: ThresholdRecord | None = None
    input: InputSpec | None = None
    training: TrainingRecord | None = None
    taxonomy: TaxonomyRecord | None = None
    model: ModelConfig | None = None
    format_version: int = FORMAT_VERSION
    package_version: str | None = None
    dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)
    origin: Origin | None = None

    # --- what consumers need -------------------------------------------------------------------------------
    @property
    def where(self) -> str:
        """The file this record came from, for messages."""
        return self.origin.path if self.origin is not None else "the checkpoint"

    @property
    def sha256(self) -> str:
        """The SHA-256 of the file this record was loaded from ('' when unknown)."""
        return (self.origin.sha256 or "") if self.origin is not None else ""

    @property
    def preset(self) -> str | None:
        if self.model is not None:
            return self.model.preset
        return self.origin.preset if self.origin is not None else None

    def decision_threshold(self) -> ThresholdRecord:
        """The recorded threshold; a checkpoint without one has no decision rule: an error, not 0.5."""
        if self.threshold is None:
            raise CheckpointError(
                f"{self.where} records no decision threshold, so it cannot give verdicts. Choose one with "
                f"`mfclip eval {self.where} --data VAL --calibrate VAL`."
            )
        return self.threshold

    def input_spec(self) -> InputSpec:
        """The recorded crop policy + preprocessing; a checkpoint without a crop policy is an error."""
        if self.input is None:
            raise CheckpointError(
                f"{self.where} records no face-crop policy (preprocess.crop), so its crops cannot be reproduced. "
                f"{_FIX_CKPT}"
            )
        return self.input

    def calibrated(self, threshold: ThresholdRecord) -> CheckpointMeta:
        """This record with a new threshold that keeps the old one as ``previous``; no file origin."""
        return replace(self, threshold=replace(threshold, previous=self.threshold), origin=None)

    # --- checkpoint JSON -----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The checkpoint's ``mfclip`` metadata object."""
        out: dict[str, Any] = {}
        if self.threshold is not None:
            out["threshold"] = replace(self.threshold, source=None).to_json()
        if self.input is not None:
            out["preprocess"] = self.input.to_json()
        if self.taxonomy is not None:
            out["taxonomy"] = self.taxonomy.to_json()
        if self.training is not None:
            out["training"] = self.training.to_json()
        out.update(self.extra)
        out.update(format_version=self.format_version,
                   model=None if self.model is None else self.model.to_dict(),
                   package_version=self.package_version, dtype=self.dtype)
        return out

    @staticmethod
    def from_json(meta: Any, where: str) -> CheckpointMeta:
        """The record in a checkpoint's metadata object; anything malformed is a CheckpointError naming ``where``."""
        if not isinstance(meta, dict):
            raise CheckpointError(
                f"{where}: its mfclip metadata is a JSON {type(meta).__name__}, not an object. {_FIX_CKPT}"
            )
        if not isinstance(meta.get("model"), dict):
            found = "missing" if "model" not in meta else f"a {type(meta['model']).__name__}"
            raise CheckpointError(
                f"{where}: the metadata's 'model' (architecture) is {found}, not an object. {_FIX_CKPT}"
            )
        threshold = _threshold(meta.get("threshold"), where)
        pre = meta.get("preprocess")
        if pre is not None and not isinstance(pre, dict):
            raise CheckpointError(f"{where}: preprocess is a {type(pre).__name__}, not an object. {_FIX_CKPT}")
        for key in ("training", "taxonomy"):
            if meta.get(key) is not None and not isinstance(meta[key], dict):
                raise CheckpointError(f"{where}: '{key}' is a {type(meta[key]).__name__}, not an object. {_FIX_CKPT}")
        crop = None if pre is None or pre.get("crop") is None else _crop_policy(pre["crop"], where)
        model = _model_config(meta["model"], where)
        known = {"threshold", "preprocess", "training", "taxonomy", "model", "format_version", "package_version",
                 "dtype"}
        return CheckpointMeta(
            threshold=threshold,
            input=None if crop is None else InputSpec(crop, model.preprocess),
            training=None if meta.get("training") is None else TrainingRecord.from_json(meta["training"]),
            taxonomy=None if meta.get("taxonomy") is None else TaxonomyRecord.from_json(meta["taxonomy"]),
            model=model, format_version=meta.get("format_version"), package_version=meta.get("package_version"),
            dtype=meta.get("dtype", "float32"), extra={k: v for k, v in meta.items() if k not in known},
            origin=Origin(where, preset=model.preset),
        )

    # --- ONNX manifest -------------------------------------------------------------------------------------
    def manifest_entries(self) -> dict[str, Any]:
        """The manifest's entries that repeat this record (the decision threshold and the input spec)."""
        threshold, spec = self.decision_threshold(), self.input_spec()
        return {
            "checkpoint": {"file": Path(self.where).name, "sha256": self.sha256, "preset": self.preset,
                           "format_version": self.format_version, "dtype": self.dtype},
            "threshold": threshold.value,
            "threshold_source": replace(threshold, source=None).to_json(),
            "preprocess": spec.preprocess.to_dict(),
            "crop": spec.crop.to_dict(),
            "crop_source": "checkpoint",
        }

    @staticmethod
    def from_manifest(manifest: dict[str, Any], where: str) -> CheckpointMeta:
        """The record an ONNX manifest repeats; missing or malformed entries are a CheckpointError.

        Graph entries are checked for shape here; their paths are confined to the folder by the ONNX backend.
        """

        def fail(what: str) -> CheckpointError:
            return CheckpointError(f"{where}: {what}. {_REEXPORT}")

        for key in ("threshold", "preprocess", "crop", "image_encoder"):
            if manifest.get(key) is None:
                raise fail(f"the manifest has no '{key}'")
        value = check_threshold(manifest["threshold"], where, _REEXPORT)
        encoders = manifest["image_encoder"]
        if not isinstance(encoders, dict) or not encoders:
            raise fail("'image_encoder' must be an object of graph entries")
        for variant, entry in encoders.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not entry["file"]:
                raise fail(f"image_encoder.{variant} needs a 'file' name")
            if not isinstance(entry.get("sha256"), str) or len(entry["sha256"]) != 64:
                raise fail(f"image_encoder.{variant} needs the graph's 'sha256' (64 hex digits)")
            if entry.get("bytes") is not None and (isinstance(entry["bytes"], bool)
                                                   or not isinstance(entry["bytes"], int)):
                raise fail(f"image_encoder.{variant}.bytes must be an integer")
        ckpt = manifest.get("checkpoint")
        if ckpt is not None and not isinstance(ckpt, dict):
            raise fail("'checkpoint' must be an object")
        ckpt = ckpt or {}
        source = manifest.get("threshold_source")
        threshold = (ThresholdRecord.from_json({**source, "value": value}) if isinstance(source, dict)
                     else ThresholdRecord(value))
        spec = InputSpec(_crop_policy(manifest["crop"], where), _preprocess_config(manifest["preprocess"], where))
        return CheckpointMeta(
            threshold=threshold, input=spec, format_version=ckpt.get("format_version", FORMAT_VERSION),
            dtype=ckpt.get("dtype") or "float32",
            origin=Origin(str(ckpt.get("file", where)), str(ckpt.get("sha256", "")), ckpt.get("preset")),
        )


# --- checks --------------------------------------------------------------------------------------------------
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


def _threshold(data: Any, where: str) -> ThresholdRecord | None:
    """A checkpoint's threshold entry (a number, or ``{"value": number, ...}``) as a checked record."""
    if data is None:
        return None
    if not isinstance(data, dict):
        return ThresholdRecord(check_threshold(data, where))
    if data.get("value") is None:
        return None
    return ThresholdRecord.from_json({**data, "value": check_threshold(data["value"], where)})


def _crop_policy(data: Any, where: str) -> CropPolicy:
    """A CropPolicy from a metadata object; wrong types or values are a CheckpointError naming ``where``."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: the crop policy is a {type(data).__name__}, not an object. {_FIX_CKPT}")
    try:
        return CropPolicy.from_dict(data)
    except (MfclipError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: bad crop policy ({exc}). {_FIX_CKPT}") from None


def _preprocess_config(data: Any, where: str) -> PreprocessConfig:
    """A PreprocessConfig from a metadata object; missing keys or wrong types are a CheckpointError."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: preprocess is a {type(data).__name__}, not an object. {_FIX_CKPT}")
    try:
        return PreprocessConfig.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: bad preprocess settings ({type(exc).__name__}: {exc}). {_FIX_CKPT}") from None


def _model_config(data: dict[str, Any], where: str) -> ModelConfig:
    try:
        return ModelConfig.from_dict(data)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed architecture record is the file's fault
        raise CheckpointError(
            f"{where}: its architecture record ('model') is malformed ({type(exc).__name__}: {exc}). "
            f"Use a checkpoint written by `mfclip train`."
        ) from None
