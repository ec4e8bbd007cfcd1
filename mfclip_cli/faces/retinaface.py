"""RetinaFace-MobileNet0.25 (shipped ONNX) with our own priors, decoding and NMS, batched on CPU or CUDA."""

from __future__ import annotations

import logging
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from mfclip_cli import paths
from mfclip_cli.cpus import usable_cpus
from mfclip_cli.errors import WeightsNotFound
from mfclip_cli.faces.types import Face
from mfclip_cli.imaging import check_rgb

# Network constants of the biubug6 Pytorch_Retinaface "mobilenet0.25" configuration.
_STRIDES = (8, 16, 32)
_MIN_SIZES = ((16, 32), (64, 128), (256, 512))
_VARIANCES = (0.1, 0.2)
_MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)
_PRE_NMS_TOP_K = 5000
_POST_NMS_TOP_K = 750


def default_threads() -> int:
    """Intra-op threads: the CPUs this process may use, capped at 8 (more rarely helps this small net)."""
    return min(8, usable_cpus())


def make_session(model_path: Path, providers: list[str] | None = None, threads: int | None = None):
    """An onnxruntime session: CUDA only when it is available and actually loads, else CPU."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: ORT's provider-fallback warnings are handled below
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see onnx_backend.session_options
    if providers is not None:
        return ort.InferenceSession(str(model_path), sess_options=opts, providers=list(providers))
    if "CUDAExecutionProvider" in ort.get_available_providers():
        try:
            sess = ort.InferenceSession(
                str(model_path),
                sess_options=opts,
                providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
            )
            if "CUDAExecutionProvider" in sess.get_providers():
                return sess
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types when CUDA libraries are missing
            logging.getLogger(__name__).warning("CUDA face detector session failed (%s); using CPU.", exc)
    return ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])


@lru_cache(maxsize=32)
def prior_boxes(height: int, width: int) -> np.ndarray:
    """Anchors (N, 4) as normalised (cx, cy, w, h) for an input of ``height`` x ``width`` pixels.

    Order matches the network outputs: per stride, feature-map cells row-major, then each min size.
    """
    chunks = []
    for stride, sizes in zip(_STRIDES, _MIN_SIZES):
        fh, fw = math.ceil(height / stride), math.ceil(width / stride)
        ys, xs = np.meshgrid(np.arange(fh, dtype=np.float32), np.arange(fw, dtype=np.float32), indexing="ij")
        cx = (xs.reshape(-1, 1) + 0.5) * stride / width
        cy = (ys.reshape(-1, 1) + 0.5) * stride / height
        n = fh * fw
        k = len(sizes)
        s = np.asarray(sizes, dtype=np.float32)
        chunk = np.stack(
            [
                np.broadcast_to(cx, (n, k)),
                np.broadcast_to(cy, (n, k)),
                np.broadcast_to(s / width, (n, k)),
                np.broadcast_to(s / height, (n, k)),
            ],
            axis=-1,
        ).reshape(-1, 4)
        chunks.append(chunk)
    priors = np.concatenate(chunks, axis=0)
    priors.flags.writeable = False
    return priors


def decode_boxes(loc: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """(N, 4) normalised x1, y1, x2, y2 from regression offsets and (cx, cy, w, h) priors."""
    centers = priors[:, :2] + loc[:, :2] * _VARIANCES[0] * priors[:, 2:]
    sizes = priors[:, 2:] * np.exp(loc[:, 2:] * _VARIANCES[1])
    return np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)


def decode_landmarks(pre: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """(N, 5, 2) normalised landmark points from offsets (N, 10) and priors."""
    offsets = pre.reshape(-1, 5, 2)
    return priors[:, None, :2] + offsets * _VARIANCES[0] * priors[:, None, 2:]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, highest score first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


class RetinaFaceDetector:
    """Face boxes, scores and 5 landmarks from the shipped RetinaFace-MobileNet0.25 ONNX model.

    Images are downscaled so the longer side is at most ``max_side`` (coordinates are mapped back).
    Images of similar size are batched together, padded bottom/right with zeros after mean subtraction
    (what the network's own convolution padding sees), which leaves detections unchanged.
    """

    name = "retinaface"

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        providers: list[str] | None = None,
        score_threshold: float = 0.7,
        nms_threshold: float = 0.4,
        max_side: int = 640,
        max_batch: int = 8,
        max_pad_ratio: float = 1.25,
        threads: int | None = None,
    ):
        path = Path(model_path) if model_path is not None else paths.retinaface_model()
        if not path.is_file():
            raise WeightsNotFound(
                f"Face detector weights {path} are missing. They ship in the repo's weights/ folder; "
                f"restore it (git checkout weights/) or point $MFCLIP_WEIGHTS at a folder holding "
                f"{path.name}."
            )
        if max_side < 32:
            raise ValueError(f"max_side must be >= 32, got {max_side}")
        self.model_path = path
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.max_side = int(max_side)
        self.max_batch = max(1, int(max_batch))
        # A batch may hold at most this much padded area relative to its images' own area.
        self.max_pad_ratio = float(max_pad_ratio)
        # scan runs one detector call per worker thread: 1 intra-op thread each avoids oversubscription
        self._session = make_session(path, providers, threads)
        self._input_name = self._session.get_inputs()[0].name

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, float, float]:
        """The RGB uint8 image the network sees (longer side at most ``max_side``) and the x/y scale from
        original to that image's pixel pitch.

        Downscaling halves with a 2x2 box filter (cv2's fast INTER_AREA path) while the image is at least
        twice the target, then finishes with bilinear: anti-aliased like a one-step INTER_AREA resize, at a
        tenth of its cost for the fractional factors big photos need (9-56 ms -> 1-8 ms on one core).
        """
        import cv2

        check_rgb(image)
        h, w = image.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        if scale == 1.0:
            return image, 1.0, 1.0
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        pitch = 1  # original pixels per pixel of ``image`` after the halvings
        while image.shape[1] >= 2 * nw and image.shape[0] >= 2 * nh:
            ch, cw = image.shape[:2]
            image = cv2.resize(image, (cw // 2, ch // 2), interpolation=cv2.INTER_AREA)
            pitch *= 2
        ch, cw = image.shape[:2]
        if (cw, ch) != (nw, nh):
            image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        # resized pixel u spans original [u, u + 1) * pitch * cw / nw (odd sides lose a row/column per halving)
        return image, nw / (pitch * cw), nh / (pitch * ch)

    @staticmethod
    def _fill(x: np.ndarray, image: np.ndarray) -> None:
        """Write RGB uint8 ``image`` into the top-left of ``x`` (3, H, W) float32 as mean-subtracted BGR planes."""
        import cv2

        h, w = image.shape[:2]
        planes = cv2.split(image)  # contiguous R, G, B planes: the subtraction below then streams
        for c, plane in enumerate(reversed(planes)):
            np.subtract(plane, _MEAN_BGR[c], out=x[c, :h, :w], dtype=np.float32)

    def _plan_batches(self, shapes: list[tuple[int, int]]) -> list[list[int]]:
        """Group image indices (sorted by size) so that padding wastes little compute."""
        order = sorted(range(len(shapes)), key=lambda i: (shapes[i][0] * shapes[i][1], shapes[i]))
        batches: list[list[int]] = []
        for i in order:
            if batches and len(batches[-1]) < self.max_batch:
                cand = batches[-1] + [i]
                hh = max(shapes[j][0] for j in cand)
                ww = max(shapes[j][1] for j in cand)
                own = sum(shapes[j][0] * shapes[j][1] for j in cand)
                if hh * ww * len(cand) <= self.max_pad_ratio * own:
                    batches[-1] = cand
                    continue
            batches.append([i])
        return batches

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Faces per RGB uint8 image (any sizes), each list sorted by score, highest first."""
        prepared = [self._prepare(img) for img in images]
        results: list[list[Face]] = [[] for _ in images]
        for batch in self._plan_batches([p[0].shape[:2] for p in prepared]):
            hh = max(prepared[i][0].shape[0] for i in batch)
            ww = max(prepared[i][0].shape[1] for i in batch)
            padded = any(prepared[i][0].shape[:2] != (hh, ww) for i in batch)
            x = (np.zeros if padded else np.empty)((len(batch), 3, hh, ww), dtype=np.float32)
            for b, i in enumerate(batch):
                self._fill(x[b], prepared[i][0])
            loc, conf, landms = self._session.run(None, {self._input_name: x})
            priors = prior_boxes(hh, ww)
            for b, i in enumerate(batch):
                _, sx, sy = prepared[i]
                results[i] = self._postprocess(loc[b], conf[b], landms[b], priors, ww / sx, hh / sy)
        return results

    def _postprocess(
        self,
        loc: np.ndarray,
        conf: np.ndarray,
        landms: np.ndarray,
        priors: np.ndarray,
        scale_x: float,
        scale_y: float,
    ) -> list[Face]:
        scores = conf[:, 1]
        idx = np.flatnonzero(scores > self.score_threshold)
        if idx.size == 0:
            return []
        if idx.size > _PRE_NMS_TOP_K:
            idx = idx[np.argsort(-scores[idx], kind="stable")[:_PRE_NMS_TOP_K]]
        pri = priors[idx]
        xy_scale = np.array([scale_x, scale_y], dtype=np.float64)
        boxes = decode_boxes(loc[idx].astype(np.float64), pri.astype(np.float64)) * np.tile(xy_scale, 2)
        points = decode_landmarks(landms[idx].astype(np.float64), pri.astype(np.float64)) * xy_scale
        s = scores[idx].astype(np.float64)
        keep = nms(boxes, s, self.nms_threshold)[:_POST_NMS_TOP_K]
        return [
            Face(
                box=tuple(float(v) for v in boxes[k]),
                score=float(s[k]),
                landmarks=tuple((float(px), float(py)) for px, py in points[k]),
            )
            for k in keep
        ]
