"""OpenCV Haar-cascade face detector: a dependency-free fallback with boxes only (no landmarks)."""

from __future__ import annotations

import numpy as np

from mfclip_cli.errors import MfclipError
from mfclip_cli.faces.types import Face

CASCADE_FILE = "haarcascade_frontalface_default.xml"


class HaarDetector:
    """Frontal faces from OpenCV's bundled Haar cascade; every face gets score 1.0 and no landmarks.

    Images are downscaled so the longer side is at most ``max_side`` (the cascade is slow on big images
    and gains nothing from them); boxes are mapped back to the original pixels.
    """

    name = "haar"

    def __init__(
        self,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: int = 20,
        max_side: int = 800,
        cascade_path: str | None = None,
    ):
        import cv2

        path = cascade_path or (cv2.data.haarcascades + CASCADE_FILE)
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise MfclipError(
                f"OpenCV Haar cascade {path} cannot be loaded. Reinstall opencv-python-headless (>=4.8,<5), "
                f"which bundles it, or use --detector retinaface."
            )
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size = int(min_size)
        self.max_side = int(max_side)

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Faces per RGB uint8 image, largest first (all scores are 1.0)."""
        return [self._detect_one(img) for img in images]

    def _detect_one(self, image: np.ndarray) -> list[Face]:
        import cv2

        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        h, w = grey.shape
        scale = min(1.0, self.max_side / max(h, w))
        if scale < 1.0:
            grey = cv2.resize(
                grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
            )
        grey = cv2.equalizeHist(grey)
        min_side = max(8, round(self.min_size * scale))
        rects = self._cascade.detectMultiScale(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(min_side, min_side)
        )
        faces = [
            Face(box=(x / scale, y / scale, (x + bw) / scale, (y + bh) / scale), score=1.0, landmarks=None)
            for x, y, bw, bh in (tuple(float(v) for v in r) for r in rects)
        ]
        return sorted(faces, key=lambda f: -f.area)
