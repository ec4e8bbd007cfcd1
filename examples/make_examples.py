"""Regenerate the files in examples/ (deterministic: same inputs, same encoders, same bytes).

    uv run python examples/make_examples.py

Sources are scikit-image's bundled sample images (no download): ``astronaut()`` (NASA photo of Eileen
Collins, public domain) and ``chelsea()`` (Stéfan van der Walt's cat, CC0). See examples/README.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

VIDEO_SIZE = 256
VIDEO_FPS = 10
VIDEO_SECONDS = 2
JPEG_QUALITY = 90


def write_jpeg(rgb: np.ndarray, path: Path, quality: int = JPEG_QUALITY) -> None:
    """Baseline JPEG without EXIF or timestamps (Pillow output is byte-stable for a given libjpeg)."""
    from PIL import Image

    Image.fromarray(rgb).save(path, format="JPEG", quality=quality, optimize=True)


def write_grey_png(rgb: np.ndarray, path: Path) -> None:
    """8-bit greyscale PNG (ITU-R 601 luma, Pillow's "L" conversion)."""
    from PIL import Image

    Image.fromarray(rgb).convert("L").save(path, format="PNG", optimize=True)


def pan_zoom_frames(rgb: np.ndarray, n_frames: int, size: int) -> list[np.ndarray]:
    """``n_frames`` RGB frames of a slow pan and zoom-in over ``rgb`` (the face stays in view)."""
    import cv2

    h, w = rgb.shape[:2]
    frames = []
    for i in range(n_frames):
        t = i / max(1, n_frames - 1)
        side = (0.85 - 0.25 * t) * min(h, w)  # zoom in: window shrinks from 85% to 60% of the image
        cx = w * (0.42 + 0.06 * t)  # pan right across the face (at about x = 0.45 w)
        cy = h * (0.40 - 0.04 * t)
        x0 = float(np.clip(cx - side / 2, 0, w - side))
        y0 = float(np.clip(cy - side / 2, 0, h - side))
        k = size / side
        m = np.array([[k, 0.0, -k * x0], [0.0, k, -k * y0]])
        frames.append(cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT))
    return frames


def write_mp4v(frames: list[np.ndarray], path: Path, fps: int) -> None:
    """MPEG-4 Part 2 ("mp4v") video via OpenCV's bundled FFmpeg: decodable everywhere OpenCV runs."""
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write an mp4v video to {path}")
    try:
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[..., ::-1]))
    finally:
        writer.release()


def make_examples(out: Path = HERE) -> list[Path]:
    """Write the example files into ``out``; returns their paths."""
    from skimage import data

    out.mkdir(parents=True, exist_ok=True)
    astronaut = data.astronaut()
    cat = data.chelsea()
    files = {
        "astronaut.jpg": lambda p: write_jpeg(astronaut, p),
        "astronaut_grey.png": lambda p: write_grey_png(astronaut, p),
        "cat.jpg": lambda p: write_jpeg(cat, p),
        "astronaut_pan.mp4": lambda p: write_mp4v(
            pan_zoom_frames(astronaut, VIDEO_FPS * VIDEO_SECONDS, VIDEO_SIZE), p, VIDEO_FPS
        ),
    }
    written = []
    for name, write in files.items():
        path = out / name
        write(path)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write into (default: examples/)")
    args = parser.parse_args()
    for path in make_examples(args.out):
        print(f"{path.stat().st_size / 1024:8.1f} KiB  {path}")


if __name__ == "__main__":
    main()
