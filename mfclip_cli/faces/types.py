"""Face records, the crop policy that travels with a checkpoint, and the detector interface."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

import numpy as np

from mfclip_cli.errors import MfclipError

# Detector backends make_detector() builds; "none" (whole image, no detection) is a policy, not a backend.
DETECTOR_NAMES: tuple[str, ...] = ("retinaface", "insightface", "haar")
POLICY_DETECTORS: tuple[str, ...] = (*DETECTOR_NAMES, "none")

Point = tuple[float, float]


@dataclass(frozen=True)
class Face:
    """One detected face in image pixel coordinates.

    ``landmarks`` are 5 points in the RetinaFace/insightface order: left eye, right eye, nose,
    left mouth corner, right mouth corner ("left" as seen in the image), or None (e.g. Haar).
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[Point, ...] | None = None

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(float(self.score), 4),
            "landmarks": None
            if self.landmarks is None
            else [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
        }


@dataclass(frozen=True)
class CropPolicy:
    """How a face becomes the model's input square; saved in checkpoints so every command crops alike.

    ``margin`` is added on every side, as a fraction of the face size: the crop side is
    ``(1 + 2 * margin)`` times the face size, where the face size is the 112-unit ArcFace template square
    (aligned crops) or the longer side of the detection box (unaligned crops). With the default 0.25 an
    aligned crop spans 168 template units: the whole head with hair, the chin and a little neck.
    """

    detector: str = "retinaface"
    size: int = 224
    margin: float = 0.25
    align: bool = True
    min_score: float = 0.7
    min_face: int = 20

    def __post_init__(self) -> None:
        if self.detector not in POLICY_DETECTORS:
            raise MfclipError(
                f"Unknown face detector {self.detector!r} in crop policy. Valid: {', '.join(POLICY_DETECTORS)}."
            )
        if not isinstance(self.size, int) or self.size < 8:
            raise MfclipError(f"Crop size must be an integer >= 8, got {self.size!r}.")
        if not 0.0 <= float(self.margin) <= 3.0:
            raise MfclipError(
                f"Crop margin must be between 0 and 3 (fraction of face size), got {self.margin!r}."
            )
        if not 0.0 <= float(self.min_score) <= 1.0:
            raise MfclipError(f"Crop min_score must be in [0, 1], got {self.min_score!r}.")
        if self.min_face < 0:
            raise MfclipError(f"Crop min_face must be >= 0 pixels, got {self.min_face!r}.")

    @classmethod
    def none(cls, size: int = 224) -> CropPolicy:
        """Policy for pre-aligned datasets: the whole image resized to ``size`` x ``size``, no detection."""
        return cls(detector="none", size=size, margin=0.0, align=False, min_score=0.0, min_face=0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CropPolicy:
        """Policy from :meth:`to_dict` output; missing keys take defaults, unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MfclipError(
                f"Unknown crop policy field(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}. "
                f"The checkpoint may come from a newer mfclip."
            )
        return cls(**data)


class FaceDetector(Protocol):
    """What crop_faces needs from a backend."""

    name: str

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Faces per RGB uint8 image, highest score first."""
        ...
