"""Face detectors and the one crop function that train, eval and scan share.

``crop_faces(image, detector, policy)`` is the only way an image becomes model input squares, so a
checkpoint's :class:`CropPolicy` reproduces its training crops exactly at eval and scan time.
Backends are imported when built, never at package import.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mfclip_cli.errors import MfclipError
from mfclip_cli.faces.types import DETECTOR_NAMES, POLICY_DETECTORS, CropPolicy, Face, FaceDetector
from mfclip_cli.imaging import check_rgb

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "DETECTOR_NAMES",
    "POLICY_DETECTORS",
    "CropPolicy",
    "Face",
    "FaceDetector",
    "align_crop",
    "crop_faces",
    "crop_transform",
    "detector_for_policy",
    "image_from_crop_transform",
    "make_detector",
    "similarity_transform",
    "template_in_crop",
]

# The standard ArcFace 5-point template in a 112x112 crop (eyes, nose tip, mouth corners).
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
_TEMPLATE_SIDE = 112.0

# Pixels outside the image are black: a constant never invents content (reflection would mirror faces).
BORDER_VALUE = 0


def make_detector(name: str, **kw: Any) -> FaceDetector:
    """A face detector backend by name ("retinaface", "insightface" or "haar"); ``kw`` go to its constructor."""
    if name == "retinaface":
        from mfclip_cli.faces.retinaface import RetinaFaceDetector

        return RetinaFaceDetector(**kw)
    if name == "insightface":
        from mfclip_cli.faces.insightface_backend import InsightFaceDetector

        return InsightFaceDetector(**kw)
    if name == "haar":
        from mfclip_cli.faces.haar import HaarDetector

        return HaarDetector(**kw)
    raise MfclipError(f"Unknown face detector {name!r}. Valid: {', '.join(DETECTOR_NAMES)}.")


def detector_for_policy(policy: CropPolicy, **kw: Any) -> FaceDetector | None:
    """The detector a crop policy asks for, or None for policy detector "none" (whole-image crops)."""
    if policy.detector == "none":
        return None
    return make_detector(policy.detector, **kw)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 least-squares similarity (rotation, uniform scale, translation) mapping ``src`` points onto ``dst``.

    Umeyama's closed form; with 5 landmarks it is exact and deterministic (no RANSAC).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sv, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rot = u @ np.diag(d) @ vt
    var_s = (s0**2).sum() / len(src)
    scale = float((sv * d).sum() / var_s) if var_s > 0 else 1.0
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def template_in_crop(policy: CropPolicy) -> np.ndarray:
    """Where the 5 template landmarks land in a ``policy.size`` aligned crop (the 112 square plus margin)."""
    side = _TEMPLATE_SIDE * (1 + 2 * policy.margin)
    return (ARCFACE_TEMPLATE_112 + _TEMPLATE_SIDE * policy.margin) * (policy.size / side)


def crop_transform(face: Face, policy: CropPolicy) -> np.ndarray:
    """The 2x3 affine map from image pixels to crop pixels that :func:`align_crop` applies."""
    if policy.align and face.landmarks is not None and len(face.landmarks) >= 5:
        return similarity_transform(np.asarray(face.landmarks[:5]), template_in_crop(policy))
    x1, y1, x2, y2 = face.box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(x2 - x1, y2 - y1, 1.0) * (1 + 2 * policy.margin)
    k = policy.size / side
    # Continuous square [cx - side/2, cx + side/2] onto [0, size]; pixel centres sit at +0.5.
    tx = k * (0.5 - (cx - side / 2)) - 0.5
    ty = k * (0.5 - (cy - side / 2)) - 0.5
    return np.array([[k, 0.0, tx], [0.0, k, ty]])


def image_from_crop_transform(face: Face, policy: CropPolicy) -> np.ndarray:
    """The 2x3 affine map from crop pixels back to image pixels for a crop made by :func:`crop_faces`.

    Policy detector "none" (whole image resized, ``face.box`` = [0, 0, w, h]) maps with cv2.resize's
    pixel-centre convention; every other crop is the inverse of :func:`crop_transform`.
    """
    import cv2

    if policy.detector == "none":
        w, h = face.box[2], face.box[3]
        fx, fy = w / policy.size, h / policy.size
        return np.array([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5]])
    return cv2.invertAffineTransform(crop_transform(face, policy))


def _warp(image: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """warpAffine with area pre-shrinking for strong downscales (bilinear alone would alias)."""
    import cv2

    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
    if scale < 2 / 3:
        h, w = image.shape[:2]
        inv = cv2.invertAffineTransform(m)
        corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64)
        src = corners @ inv[:, :2].T + inv[:, 2]
        pad = math.ceil(2 / scale) + 1
        x0 = max(0, math.floor(src[:, 0].min()) - pad)
        y0 = max(0, math.floor(src[:, 1].min()) - pad)
        x1 = min(w, math.ceil(src[:, 0].max()) + pad)
        y1 = min(h, math.ceil(src[:, 1].max()) + pad)
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            nw, nh = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
            small = cv2.resize(image[y0:y1, x0:x1], (nw, nh), interpolation=cv2.INTER_AREA)
            fx, fy = nw / (x1 - x0), nh / (y1 - y0)
            # small pixel u is source pixel x0 + (u + 0.5) / fx - 0.5 (cv2.resize's centre convention)
            to_src = np.array([[1 / fx, 0, x0 + 0.5 / fx - 0.5], [0, 1 / fy, y0 + 0.5 / fy - 0.5], [0, 0, 1]])
            m = m @ to_src
            image = small
    return cv2.warpAffine(
        image,
        m,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(BORDER_VALUE,) * 3,
    )


def align_crop(image: np.ndarray, face: Face, policy: CropPolicy) -> np.ndarray:
    """The ``policy.size`` square RGB uint8 crop of ``face``.

    With landmarks and ``policy.align``: a 5-point similarity onto the ArcFace template, widened by
    ``policy.margin`` on every side (eyes level, head upright). Otherwise the detection box made square
    around its centre and widened by the margin. Parts outside the image are black.
    """
    check_rgb(image)
    return _warp(image, crop_transform(face, policy), policy.size)


def _whole_image(image: np.ndarray, size: int) -> tuple[Face, np.ndarray]:
    import cv2

    h, w = image.shape[:2]
    shrink = w > size or h > size
    crop = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return Face(box=(0.0, 0.0, float(w), float(h)), score=1.0, landmarks=None), crop


def crop_faces(
    image: np.ndarray,
    detector: FaceDetector | None,
    policy: CropPolicy,
    max_faces: int | None = None,
) -> list[tuple[Face, np.ndarray]]:
    """(face, crop) pairs for the faces ``policy`` accepts, largest face first (then highest score).

    Faces below ``policy.min_score`` or with a box side shorter than ``policy.min_face`` pixels are
    dropped. Policy detector "none" returns the whole image resized, without calling a detector.
    """
    check_rgb(image)
    if policy.detector == "none":
        return [_whole_image(image, policy.size)]
    if detector is None:
        raise MfclipError(f"Crop policy uses detector {policy.detector!r} but no detector was given.")
    faces = [
        f
        for f in detector.detect([image])[0]
        if f.score >= policy.min_score and min(f.width, f.height) >= policy.min_face
    ]
    faces.sort(key=lambda f: (-f.area, -f.score))
    if max_faces is not None:
        faces = faces[: max(0, max_faces)]
    return [(f, align_crop(image, f, policy)) for f in faces]


