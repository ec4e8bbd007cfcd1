"""Video frames: sampling at a rate or a count, with the container's fps, warnings for streams that break off."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from mfclip_cli.errors import MediaError

DEFAULT_VIDEO_FPS = 25.0


@dataclass(frozen=True, eq=False)
class VideoFrame:
    """A decoded video frame: its index in decode order, its timestamp and RGB uint8 pixels."""

    index: int
    time_s: float
    image: np.ndarray


# --------------------------------------------------------------------------------------------- videos


def quiet_video_decoders() -> None:
    """Keep FFmpeg's and OpenCV's own log lines off stderr (a broken stream is reported in the item's
    ``video.warnings`` instead). Set before the first capture is opened; a value the user set wins."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


def _open_capture(path: str):
    quiet_video_decoders()
    import cv2

    if not os.path.exists(path):
        raise MediaError("not_found", f"{path}: file not found. Check the path.")
    if not os.access(path, os.R_OK):
        raise MediaError("unreadable", f"{path}: permission denied. Check the file's permissions.")
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        cap.release()
        raise MediaError(
            "video_unreadable",
            f"{path}: OpenCV cannot open this video (corrupt file or unsupported codec). "
            f"Try re-encoding it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4.",
        )
    return cap


def _container_fps(cap) -> float | None:
    import cv2

    fps = cap.get(cv2.CAP_PROP_FPS)
    if not math.isfinite(fps) or fps <= 0 or fps > 1000:
        return None
    return float(fps)


def video_info(path: str | os.PathLike) -> dict:
    """What the container claims: fps, frame count, size, codec and duration (for reports; not trusted)."""
    import cv2

    p = os.fspath(path)
    cap = _open_capture(p)
    try:
        fps = _container_fps(cap)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        frame_count = int(count) if math.isfinite(count) and count > 0 else None
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC))
        codec = "".join(chr((fourcc >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00 ") if fourcc else None
        return {
            "fps": fps,
            "frame_count": frame_count,
            "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            "codec": codec or None,
            "duration_s": (frame_count / fps) if (frame_count and fps) else None,
        }
    finally:
        cap.release()


def iter_video_frames(
    path: str | os.PathLike,
    fps: float | None = None,
    every: int | None = None,
    max_frames: int | None = None,
) -> Iterator[VideoFrame]:
    """RGB frames of a video, decoded in order, sampled by time (``fps``) or by count (``every``).

    ``fps=2`` keeps the first frame at or after each 0.5 s step; ``every=N`` keeps frames 0, N, 2N...;
    neither keeps every frame. ``max_frames`` caps the frames kept. Timestamps come from the decoder
    (CAP_PROP_POS_MSEC) and fall back to index / container fps (25 when unknown). The file is opened
    now (raising MediaError "not_found", "unreadable" or "video_unreadable"); iteration raises
    MediaError("no_frames") when the video yields no frame at all.
    """
    if fps is not None and every is not None:
        raise ValueError("pass either fps or every, not both")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if every is not None and (not isinstance(every, int) or every < 1):
        raise ValueError(f"every must be an integer >= 1, got {every!r}")
    if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
        raise ValueError(f"max_frames must be an integer >= 1, got {max_frames!r}")
    p = os.fspath(path)
    cap = _open_capture(p)
    return VideoFrames(cap, p, fps, every, max_frames)


class VideoFrames:
    """The frames :func:`iter_video_frames` yields; ``warnings`` (filled while iterating) says when the
    stream broke off before the end the container declares, or a sampled frame could not be decoded."""

    def __init__(self, cap, path: str, fps: float | None, every: int | None, max_frames: int | None):
        self.warnings: list[str] = []
        self._it = _frames(cap, path, fps, every, max_frames, self.warnings)

    def __iter__(self) -> Iterator[VideoFrame]:
        return self._it

    def __next__(self) -> VideoFrame:
        return next(self._it)


# A stream that ends this many frames (and this share) short of the container's frame count is reported:
# containers round their counts, so a frame or two missing is normal.
_SHORT_STREAM_FRAMES = 3
_SHORT_STREAM_SHARE = 0.02


def _frames(
    cap, path: str, fps: float | None, every: int | None, max_frames: int | None, warnings: list[str]
) -> Iterator[VideoFrame]:
    import cv2

    container_fps = _container_fps(cap) or DEFAULT_VIDEO_FPS
    count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    declared = int(count) if math.isfinite(count) and count > 0 else None
    failed = 0
    index = 0
    kept = 0
    last_bucket = -1
    last_t = -1.0
    use_pos = True  # trust decoder timestamps until they misbehave once
    try:
        while True:
            if not cap.grab():
                break
            t = index / container_fps
            if use_pos:
                pos = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                if math.isfinite(pos) and pos >= 0 and (pos > last_t or index == 0):
                    t = pos
                else:
                    use_pos = False
            last_t = t
            if fps is not None:
                bucket = math.floor(t * fps + 1e-6)
                keep = bucket > last_bucket
            elif every is not None:
                keep = index % every == 0
            else:
                keep = True
            if keep:
                ok, bgr = cap.retrieve()
                if ok and bgr is not None and bgr.size:
                    if fps is not None:
                        last_bucket = bucket
                    if bgr.ndim == 2:
                        rgb = cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
                    else:
                        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                    yield VideoFrame(index=index, time_s=t, image=rgb)
                    kept += 1
                    if max_frames is not None and kept >= max_frames:
                        return
                else:
                    failed += 1
            index += 1
        if failed:
            warnings.append(f"{failed} sampled frame(s) could not be decoded (corrupt data in the stream)")
        if declared is not None and declared - index >= max(_SHORT_STREAM_FRAMES, _SHORT_STREAM_SHARE * declared):
            warnings.append(
                f"decoding stopped at frame {index} of the {declared} the container declares (corrupt or "
                f"truncated stream): only the first {index / container_fps:.1f} s were scored"
            )
        if kept == 0:
            raise MediaError(
                "no_frames",
                f"{path}: the video has no decodable frame (empty or corrupt stream). Try re-encoding it.",
            )
    finally:
        cap.release()
