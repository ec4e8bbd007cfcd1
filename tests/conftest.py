"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# --- model-core fixtures (test_model.py, test_checkpoint.py, test_preprocess.py) -----------------------
FACES_DIR = Path(os.environ.get("MFCLIP_SHARED_FACES") or Path(__file__).resolve().parents[2] / "shared" / "data" / "faces")
# the external benchmark sets (generic trees from sources absent from FACES_DIR), beside it by default
EXTERNAL_DIR = Path(os.environ.get("MFCLIP_SHARED_EXTERNAL") or FACES_DIR.parent / "external")
REPO = Path(__file__).resolve().parents[1]


def require_shipped(path: Path) -> Path:
    """``path``, a shipped file under weights/; when it is missing the calling test fails (never skips) in a
    git checkout, where weights/ is tracked. Only a tree without git (an unpacked sdist) skips it."""
    if path.is_file():
        return path
    if (REPO / ".git").exists():
        pytest.fail(f"shipped file {path} is missing from this git checkout, where weights/ is tracked: restore "
                    f"it with `git checkout -- weights/` (or unset MFCLIP_WEIGHTS if it points elsewhere)",
                    pytrace=False)
    pytest.skip(f"{path} is not shipped in this tree (no git checkout)")


def signal_after_first_line(cmd: list[str], lines: Path, sig: int, timeout: float = 300.0) -> tuple[int, str]:
    """Run ``cmd`` (from the repository), send ``sig`` once ``lines`` holds a first complete line;
    (exit code, stderr)."""
    import subprocess
    import time

    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while not (lines.exists() and lines.read_bytes().count(b"\n") >= 1):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(sig)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return code, proc.stderr.read().decode()


def separable_ish(seed: int, n_real: int = 120, n_fake: int = 80, shift: float = 1.0):
    """Random scores in (0, 1) where fakes score higher on average."""
    rng = np.random.default_rng(seed)
    logits = np.concatenate([rng.normal(0, 1, n_real), rng.normal(shift, 1, n_fake)])
    labels = np.concatenate([np.zeros(n_real, int), np.ones(n_fake, int)])
    perm = rng.permutation(labels.size)
    return 1 / (1 + np.exp(-logits[perm])), labels[perm]


def _read_crop(path: Path, size: int = 224) -> np.ndarray:
    """RGB uint8 size x size crop of an image file (cv2 INTER_AREA resize, as the data pipeline does)."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(path)
    return np.ascontiguousarray(cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA)[:, :, ::-1])


@pytest.fixture(scope="session")
def face_paths() -> dict[str, list[Path]]:
    """Sorted image files of the shared face set: {'real/<source>': [...], 'fake/<kind>/<generator>': [...]}."""
    if not FACES_DIR.is_dir():
        pytest.skip(f"shared face data not found at {FACES_DIR}")
    out: dict[str, list[Path]] = {}
    for folder in sorted(list(FACES_DIR.glob("real/*")) + list(FACES_DIR.glob("fake/*/*"))):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if files:
            out[str(folder.relative_to(FACES_DIR))] = files
    return out


@pytest.fixture(scope="session")
def read_crop():
    """``read_crop(path, size=224)`` -> RGB uint8 crop resized with cv2.INTER_AREA."""
    return _read_crop


@pytest.fixture
def tiny_model():
    """A freshly built random-init 'tiny' preset model (seed 0), in eval mode."""
    from mfclip_cli.model import build_model, load_preset

    return build_model(load_preset("tiny"), seed=0).eval()


# --- training fixtures (test_train.py) ---------------------------------------------------------------
def _train_texture(rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """Smooth random colour texture (blurred, upsampled noise) with faint sensor-like noise, float32 RGB."""
    import cv2

    base = rng.normal(0.0, 1.0, (size // 8, size // 8, 3)).astype(np.float32)
    img = cv2.GaussianBlur(cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC), (0, 0), size / 40)
    img = (img - img.min()) / (float(np.ptp(img)) + 1e-6) * 180.0 + 38.0
    return img + rng.normal(0.0, 3.0, img.shape).astype(np.float32)


def _train_write_texture_set(root: Path, n_real: int, n_fake: int, seed: int = 0, amplitude: float = 10.0) -> Path:
    """A generic-layout set: ``real/textures/*.png`` and ``fake/entire_synthesis/upsampler/*.png``.

    Fakes are the same kind of texture plus a faint period-2 checkerboard (the trace a transposed-conv
    upsampler leaves), so a detector that reads high frequencies can tell them apart.
    """
    import cv2

    rng = np.random.default_rng(seed)
    real = root / "real" / "textures"
    fake = root / "fake" / "entire_synthesis" / "upsampler"
    real.mkdir(parents=True, exist_ok=True)
    fake.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:224, :224]
    checker = (((yy + xx) % 2) * 2 - 1)[..., None].astype(np.float32) * amplitude
    for i in range(n_real):
        cv2.imwrite(str(real / f"{i:03d}.png"), np.clip(_train_texture(rng), 0, 255).astype(np.uint8))
    for i in range(n_fake):
        cv2.imwrite(str(fake / f"{i:03d}.png"), np.clip(_train_texture(rng) + checker, 0, 255).astype(np.uint8))
    return root


def _train_write_split_manifest(root: Path) -> Path:
    """``root/manifest.csv`` of the tree with preset splits: per class every 4th file val, the next test."""
    from dataclasses import replace

    from mfclip_cli.data.layouts import read_dataset
    from mfclip_cli.data.manifest import write_manifest_csv

    records, seen = [], {0: 0, 1: 0}
    for r in read_dataset(root, "generic"):
        k = seen[r.y]
        seen[r.y] += 1
        records.append(replace(r, split={0: "val", 1: "test"}.get(k % 4, "train")))
    path = root / "manifest.csv"
    write_manifest_csv(records, path)
    return path


@pytest.fixture(scope="session")
def train_texture_set_factory():
    """``make(root, n_real, n_fake, seed=0, amplitude=10.0) -> root``: write a generated generic-layout set."""
    return _train_write_texture_set


@pytest.fixture(scope="session")
def train_small_set(tmp_path_factory) -> Path:
    """A shared read-only 24 real + 24 fake generated set (generic tree) with a preset-split manifest.csv."""
    root = _train_write_texture_set(tmp_path_factory.mktemp("train_small"), 24, 24, seed=1)
    _train_write_split_manifest(root)
    return root


@pytest.fixture(scope="session")
def train_cache_root(tmp_path_factory) -> Path:
    """One crop cache for the training tests of a session (crops are keyed by content, so sharing is safe)."""
    return tmp_path_factory.mktemp("train_cache")


@pytest.fixture
def train_cache(train_cache_root, monkeypatch) -> Path:
    """$MFCLIP_CACHE pointed at the session's temporary crop cache (never the user's)."""
    monkeypatch.setenv("MFCLIP_CACHE", str(train_cache_root))
    return train_cache_root
