"""media.py: collecting inputs, safe image decoding and video frame sampling."""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from mfclip_cli import media
from mfclip_cli.errors import MediaError, MfclipError
from mfclip_cli.media import (
    InputItem,
    collect_inputs,
    decode_image,
    decode_image_bytes,
    iter_video_frames,
    shard,
)

# ----------------------------------------------------------------------------------------- helpers


def _noise_rgb(h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _encode(arr_or_im, fmt: str, **kw) -> bytes:
    im = arr_or_im if isinstance(arr_or_im, Image.Image) else Image.fromarray(arr_or_im)
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose valid IHDR claims width x height, followed by a tiny IDAT: a decompression-bomb probe."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _write_video(path: Path, frames: int = 50, fps: float = 25.0, size=(64, 48)) -> Path:
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((h, w, 3), i * 5, dtype=np.uint8))  # frame i has brightness 5 i
    writer.release()
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, Path]:
    """The bad-input corpus plus a few good files."""
    jpeg = _encode(_noise_rgb(), "JPEG", quality=90)
    c = {
        "good": _write(tmp_path / "good.jpg", jpeg),
        "zero": _write(tmp_path / "zero.jpg", b""),
        "truncated": _write(tmp_path / "truncated.jpg", jpeg[: int(len(jpeg) * 0.6)]),
        "random": _write(tmp_path / "random.jpg", np.random.default_rng(1).bytes(4096)),
        "text_png": _write(tmp_path / "text.png", b"this is not an image, just some text\n" * 4),
        "bomb": _write(tmp_path / "bomb.png", _png_header_only(30000, 30000)),
        "bad_video": _write(tmp_path / "broken.mp4", np.random.default_rng(2).bytes(8192)),
        "unicode": _write(tmp_path / "fäce ünïcode" / " bild 1.jpg", jpeg),
    }
    (tmp_path / "empty").mkdir()
    c["empty"] = tmp_path / "empty"
    return c


# ----------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("zero", "empty_file"),
        ("truncated", "truncated"),
        ("random", "not_an_image"),
        ("text_png", "not_an_image"),
        ("bomb", "too_large"),
    ],
)
def test_bad_images_raise_their_code(corpus, name, code):
    with pytest.raises(MediaError) as err:
        decode_image(corpus[name])
    assert err.value.code == code
    assert str(corpus[name]) in err.value.message


def test_missing_image_is_not_found(tmp_path):
    with pytest.raises(MediaError) as err:
        decode_image(tmp_path / "nope.jpg")
    assert err.value.code == "not_found"


def test_truncated_png_is_an_error():
    png = _encode(_noise_rgb(), "PNG")
    with pytest.raises(MediaError) as err:
        decode_image_bytes(png[: int(len(png) * 0.6)])
    assert err.value.code == "truncated"


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    data = _png_header_only(5000, 5000)  # 25 MP: under Pillow's own limit, over ours
    start = time.perf_counter()
    with pytest.raises(MediaError) as err:
        decode_image_bytes(data, max_pixels=1_000_000)
    assert err.value.code == "too_large"
    assert "5000x5000" in err.value.message
    assert time.perf_counter() - start < 0.5


def test_huge_header_is_rejected_quickly(corpus):
    start = time.perf_counter()
    with pytest.raises(MediaError) as err:
        decode_image(corpus["bomb"])
    assert err.value.code == "too_large"
    assert time.perf_counter() - start < 0.5


def test_unreadable_file_is_reported(tmp_path, monkeypatch):
    # Tests run as root, for whom chmod 000 changes nothing: simulate the kernel's refusal instead.
    target = _write(tmp_path / "secret.jpg", _encode(_noise_rgb(), "JPEG"))
    real_open = open

    def refusing_open(path, *a, **kw):
        if os.fspath(path) == str(target):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **kw)

    for room in (media.sniff, media.decode):  # discovery sniffs a file's first bytes; decoding reads it all
        monkeypatch.setattr(room, "open", refusing_open, raising=False)
    with pytest.raises(MediaError) as err:
        decode_image(target)
    assert err.value.code == "unreadable"
    items, errors = collect_inputs([str(target)])
    assert items == [] and [e.code for e in errors] == ["unreadable"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads chmod 000 files")
def test_chmod_000_file_is_unreadable(tmp_path):
    target = _write(tmp_path / "locked.jpg", _encode(_noise_rgb(), "JPEG"))
    target.chmod(0)
    try:
        with pytest.raises(MediaError) as err:
            decode_image(target)
        assert err.value.code == "unreadable"
    finally:
        target.chmod(0o644)


def test_unicode_and_space_path_decodes(corpus):
    img = decode_image(corpus["unicode"])
    assert img.shape == (120, 160, 3) and img.dtype == np.uint8


def test_decode_image_bytes_matches_decode_image(corpus):
    assert np.array_equal(decode_image_bytes(corpus["good"].read_bytes()), decode_image(corpus["good"]))


def test_grey_decodes_to_three_equal_channels():
    grey = np.arange(60 * 80, dtype=np.uint32).reshape(60, 80) % 256
    img = decode_image_bytes(_encode(grey.astype(np.uint8), "PNG"))
    assert img.shape == (60, 80, 3)
    assert np.array_equal(img[..., 0], grey) and np.array_equal(img[..., 0], img[..., 2])


def test_alpha_is_composited_on_mid_grey():
    rgba = np.zeros((10, 20, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red everywhere
    rgba[:, :10, 3] = 0  # left half fully transparent
    rgba[:, 10:, 3] = 255
    img = decode_image_bytes(_encode(rgba, "PNG"))
    assert img.shape == (10, 20, 3)
    assert (img[:, :10] == media.ALPHA_BACKGROUND).all()
    assert (img[:, 10:] == [255, 0, 0]).all()


def test_palette_with_transparency_and_la_decode():
    p = Image.new("P", (8, 8), 0)
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.paste(1, (4, 0, 8, 8))
    img = decode_image_bytes(_encode(p, "PNG", transparency=0))
    assert img.shape == (8, 8, 3)
    assert (img[:, :4] == media.ALPHA_BACKGROUND).all() and (img[:, 4:] == [0, 255, 0]).all()
    la = decode_image_bytes(_encode(Image.new("LA", (5, 4), (200, 255)), "PNG"))
    assert la.shape == (4, 5, 3) and (la == 200).all()


def test_16_bit_png_is_scaled_to_8_bit():
    arr = np.array([[0, 257 * 100, 65535, 32896]], dtype=np.uint16).repeat(3, axis=0)
    im = Image.fromarray(arr)
    assert im.mode.startswith("I;16")
    img = decode_image_bytes(_encode(im, "PNG"))
    assert img.shape == (3, 4, 3) and img.dtype == np.uint8
    assert img[0, :, 0].tolist() == [0, 100, 255, 128]


def test_cmyk_jpeg_decodes_to_rgb():
    red = Image.new("CMYK", (32, 24), (0, 255, 255, 0))
    img = decode_image_bytes(_encode(red, "JPEG", quality=95))
    assert img.shape == (24, 32, 3)
    r, g, b = img.reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_is_applied():
    stored = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high
    stored[:, :20] = [255, 0, 0]  # left half red
    stored[:, 20:] = [0, 0, 255]  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    img = decode_image_bytes(_encode(stored, "JPEG", quality=95, exif=exif))
    assert img.shape == (40, 20, 3)
    top, bottom = img[:15].reshape(-1, 3).mean(axis=0), img[25:].reshape(-1, 3).mean(axis=0)
    assert top[0] > 200 and top[2] < 60  # stored left (red) is now on top
    assert bottom[2] > 200 and bottom[0] < 60


# ----------------------------------------------------------------------------------------- collecting


def test_bad_files_in_a_folder_become_items_that_fail_later(corpus, tmp_path):
    items, errors = collect_inputs([str(tmp_path)])
    assert [(Path(i.path).name, i.kind) for i in items] == [
        ("bomb.png", "image"),
        ("broken.mp4", "video"),
        (" bild 1.jpg", "image"),  # inside "fäce ünïcode/", sorted between "empty" and "good.jpg"
        ("good.jpg", "image"),
        ("random.jpg", "image"),
        ("text.png", "image"),
        ("truncated.jpg", "image"),
        ("zero.jpg", "image"),
    ]
    assert errors == []  # an empty subfolder is not an error; only a folder named on its own is


def test_folder_walk_is_sorted_recursive_and_deterministic(tmp_path):
    jpeg = _encode(_noise_rgb(8, 8), "JPEG")
    for rel in ("b/2.jpg", "a/z.jpg", "a/sub/1.jpg", "c.jpg"):
        _write(tmp_path / "root" / rel, jpeg)
    first, _ = collect_inputs([str(tmp_path / "root")])
    second, _ = collect_inputs([str(tmp_path / "root")])
    rels = [os.path.relpath(i.path, tmp_path / "root") for i in first]
    assert rels == ["a/sub/1.jpg", "a/z.jpg", "b/2.jpg", "c.jpg"]
    assert first == second


def test_content_wins_over_extension(tmp_path):
    folder = tmp_path / "mixed"
    _write(folder / "photo.dat", _encode(_noise_rgb(8, 8), "PNG"))
    _write(folder / "clip.bin", b"\x00\x00\x00\x18ftypisom" + b"\x00" * 32)
    _write(folder / "movie.jpg", b"\x1a\x45\xdf\xa3" + b"\x00" * 32)
    _write(folder / "notes.txt", b"hello")
    items, errors = collect_inputs([str(folder)])
    assert {Path(i.path).name: i.kind for i in items} == {
        "clip.bin": "video",
        "movie.jpg": "video",
        "photo.dat": "image",
    }
    assert errors == []


def test_named_non_media_file_is_an_error(tmp_path):
    notes = _write(tmp_path / "notes.txt", b"hello")
    items, errors = collect_inputs([str(notes)])
    assert items == [] and [e.code for e in errors] == ["not_media"]


def test_missing_path_and_empty_folder(corpus, tmp_path):
    items, errors = collect_inputs([str(tmp_path / "missing.jpg"), str(corpus["empty"])])
    assert items == []
    assert [(Path(e.path).name, e.code) for e in errors] == [
        ("missing.jpg", "not_found"),
        ("empty", "no_media"),
    ]


def test_symlink_loop_does_not_hang(tmp_path):
    root = tmp_path / "root"
    _write(root / "sub" / "face.jpg", _encode(_noise_rgb(8, 8), "JPEG"))
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)  # dir symlink to its parent
    (root / "again").symlink_to(root / "sub", target_is_directory=True)
    start = time.perf_counter()
    items, errors = collect_inputs([str(root)])
    pattern_items, _ = collect_inputs([str(root / "**")])
    assert time.perf_counter() - start < 5
    assert len(items) == 1 and errors == []
    assert len(pattern_items) == 1


def test_unreadable_folder_is_reported(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    _write(locked / "a.jpg", _encode(_noise_rgb(8, 8), "JPEG"))
    real_scandir = os.scandir

    def refusing_scandir(path="."):
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refusing_scandir)
    items, errors = collect_inputs([str(locked)])
    assert items == [] and [e.code for e in errors] == ["unreadable"]


def test_unicode_folder_and_dedup_by_resolved_path(corpus, tmp_path):
    link = tmp_path / "alias.jpg"
    link.symlink_to(corpus["unicode"])
    items, errors = collect_inputs([str(corpus["unicode"].parent), str(corpus["unicode"]), str(link)])
    assert errors == []
    assert items == [InputItem(path=str(corpus["unicode"]), kind="image")]


def test_glob_patterns(tmp_path):
    jpeg = _encode(_noise_rgb(8, 8), "JPEG")
    for rel in ("x.jpg", "y.png", "deep/z.jpg", "deep/deeper/w.jpg"):
        _write(tmp_path / "g" / rel, jpeg if rel.endswith("jpg") else _encode(_noise_rgb(8, 8), "PNG"))
    flat, _ = collect_inputs([str(tmp_path / "g" / "*.jpg")])
    assert [Path(i.path).name for i in flat] == ["x.jpg"]
    deep, _ = collect_inputs([str(tmp_path / "g" / "**" / "*.jpg")])
    assert [os.path.relpath(i.path, tmp_path / "g") for i in deep] == [
        "deep/deeper/w.jpg",
        "deep/z.jpg",
        "x.jpg",
    ]
    everything, _ = collect_inputs([str(tmp_path / "g" / "**")])
    assert len(everything) == 4
    _, errors = collect_inputs([str(tmp_path / "g" / "*.gif")])
    assert [e.code for e in errors] == ["not_found"]


def test_from_file_and_stdin(corpus, tmp_path, monkeypatch):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{corpus['good']}\n\n{corpus['unicode']}\n", encoding="utf-8")
    items, errors = collect_inputs([], from_file=str(listing))
    assert [i.path for i in items] == [str(corpus["good"]), str(corpus["unicode"])] and errors == []
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{corpus['good']}\n"))
    items, _ = collect_inputs([], from_file="-")
    assert [i.path for i in items] == [str(corpus["good"])]
    with pytest.raises(MfclipError, match="does not exist"):
        collect_inputs([], from_file=str(tmp_path / "nolist.txt"))


def test_shard_splits_sorted_items_disjointly():
    items = [InputItem(path=f"/d/{c}.jpg", kind="image") for c in "gfedcba"]
    shares = [shard(items, k, 3) for k in (1, 2, 3)]
    assert [i.path for i in shares[0]] == ["/d/a.jpg", "/d/d.jpg", "/d/g.jpg"]
    assert sorted(i.path for s in shares for i in s) == sorted(i.path for i in items)
    assert shard(list(reversed(items)), 2, 3) == shares[1]
    for k, n in ((0, 3), (4, 3), (1, 0)):
        with pytest.raises(ValueError, match="1 <= k <= n"):
            shard(items, k, n)


# ----------------------------------------------------------------------------------------- video


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return _write_video(tmp_path_factory.mktemp("video") / "clip.mp4")


def test_video_fps_sampling_keeps_one_frame_per_step(video):
    frames = list(iter_video_frames(video, fps=5))
    assert len(frames) == 10
    assert [f.index for f in frames] == list(range(0, 50, 5))
    assert np.allclose([f.time_s for f in frames], np.arange(10) * 0.2, atol=1e-3)
    brightness = [float(f.image.mean()) for f in frames]
    assert all(abs(b - 5 * f.index) < 4 for b, f in zip(brightness, frames))  # the right frames
    assert frames[0].image.shape == (48, 64, 3) and frames[0].image.dtype == np.uint8


def test_video_every_and_max_frames(video):
    assert [f.index for f in iter_video_frames(video, every=10)] == [0, 10, 20, 30, 40]
    assert len(list(iter_video_frames(video, max_frames=3))) == 3
    assert len(list(iter_video_frames(video, fps=5, max_frames=4))) == 4
    assert len(list(iter_video_frames(video))) == 50


def test_video_info_reports_container_claims(video):
    info = media.video_info(video)
    assert info["fps"] == pytest.approx(25.0)
    assert (info["width"], info["height"]) == (64, 48)
    assert info["frame_count"] == 50


def test_corrupt_video_raises(corpus):
    with pytest.raises(MediaError) as err:
        list(iter_video_frames(corpus["bad_video"]))
    assert err.value.code in ("video_unreadable", "no_frames")


def test_unicode_video_path(tmp_path):
    (tmp_path / "vïdeo ü").mkdir()
    path = _write_video(tmp_path / "vïdeo ü" / "clip 1.mp4", frames=5)
    assert len(list(iter_video_frames(path))) == 5


def test_video_sampling_arguments_are_validated(video):
    with pytest.raises(ValueError):
        iter_video_frames(video, fps=2, every=3)
    with pytest.raises(ValueError):
        iter_video_frames(video, every=0)
