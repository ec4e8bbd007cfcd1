"""Face crops for training and evaluation, cached on disk by file content hash + crop policy.

The same `faces.crop_faces` that scan uses makes every crop, so a model sees the same framing in every
command. The first pass detects and writes PNG crops; later epochs and later runs only read them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import MediaError
from ..faces import crop_faces, detector_for_policy
from ..faces.types import CropPolicy, Face
from ..fsutil import atomic_write_bytes, sha256_file
from ..media import decode_image
from .manifest import Record

# Bumped when the crop code changes what a policy produces, so no cache mixes old and new framings.
# 2: RetinaFace downscales images above its max side by halvings + bilinear (landmarks move < 1 %).
CROP_CODE_VERSION = 2


def policy_key(policy: CropPolicy) -> str:
    """Short stable hash of a crop policy and the crop code's version (cache namespace)."""
    key = {**policy.to_dict(), "crop_code_version": CROP_CODE_VERSION}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class CropEntry:
    """A record whose crop is ready on disk."""

    record: Record
    crop_path: str
    sha256: str
    # the face the crop was cut from, in the file's pixels (None when the cache predates geometry or the
    # policy crops whole images): the parity pipeline re-cuts it from a resized, re-encoded copy of the file
    face: Face | None = None


@dataclass(frozen=True)
class SkippedEntry:
    """A record that cannot be used: unreadable file or no face under the policy."""

    record: Record
    code: str
    message: str


class CropCache:
    """PNG crops under ``root/<policy-hash>/<sha[:2]>/<sha>.png``; '.noface' markers remember misses."""

    def __init__(self, root: str | Path, policy: CropPolicy):
        self.policy = policy
        self.root = Path(root) / policy_key(policy)

    def _base(self, sha: str) -> Path:
        return self.root / sha[:2] / sha

    def lookup(self, sha: str) -> tuple[str, str | None]:
        """('hit', path) | ('noface', None) | ('miss', None)."""
        base = self._base(sha)
        png = base.with_suffix(".png")
        if png.is_file():
            return "hit", str(png)
        if base.with_suffix(".noface").is_file():
            return "noface", None
        return "miss", None

    def store(self, sha: str, crop: np.ndarray | None, face: Face | None = None) -> str | None:
        base = self._base(sha)
        if crop is None:
            atomic_write_bytes(base.with_suffix(".noface"), b"")
            return None
        ok, buf = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise MediaError("encode_failed", "could not encode a crop as PNG")
        if face is not None:  # geometry first: a PNG without its face file is re-cut when geometry is needed
            atomic_write_bytes(base.with_suffix(".face.json"), json.dumps(face.to_dict()).encode())
        path = base.with_suffix(".png")
        atomic_write_bytes(path, buf.tobytes())
        return str(path)

    def face(self, sha: str) -> Face | None:
        """The face geometry stored with the crop of ``sha``, or None (older cache entry)."""
        p = self._base(sha).with_suffix(".face.json")
        if not p.is_file():
            return None
        d = json.loads(p.read_text())
        lm = d.get("landmarks")
        return Face(box=tuple(d["box"]), score=float(d["score"]),
                    landmarks=None if lm is None else tuple((float(x), float(y)) for x, y in lm))


def load_crop(path: str) -> np.ndarray:
    """RGB uint8 crop from the cache."""
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise MediaError("cache_corrupt", f"cached crop {path} is unreadable; delete the cache folder and rerun")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def prepare_crops(records: list[Record], policy: CropPolicy, cache: CropCache, workers: int = 2,
                  on_done: Callable[[], None] | None = None, geometry: bool = False
                  ) -> tuple[list[CropEntry], list[SkippedEntry]]:
    """Crop (largest face) every record once; returns usable entries (input order) and skipped ones.

    ``geometry``: every entry also carries its face (re-detected for cache entries stored without one).
    """
    detector = detector_for_policy(policy)
    geometry = geometry and policy.detector != "none"

    def one(rec: Record) -> CropEntry | SkippedEntry:
        try:
            sha = sha256_file(rec.path)
            state, path = cache.lookup(sha)
            face = cache.face(sha) if geometry and state == "hit" else None
            if state == "miss" or (geometry and state == "hit" and face is None):
                image = decode_image(rec.path)
                pairs = crop_faces(image, detector, policy, max_faces=1)
                face = pairs[0][0] if pairs else None
                path = cache.store(sha, pairs[0][1] if pairs else None, face)
                state = "hit" if path else "noface"
            if state == "noface":
                return SkippedEntry(rec, "no_face", f"no face under the crop policy in {rec.path}")
            return CropEntry(rec, path, sha, face)
        except MediaError as exc:
            return SkippedEntry(rec, exc.code, exc.message)
        except OSError as exc:
            return SkippedEntry(rec, "unreadable", f"{rec.path}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bad training file is skipped and listed, never a crash
            return SkippedEntry(rec, "internal_error", f"{rec.path}: {type(exc).__name__}: {exc}")
        finally:
            if on_done:
                on_done()

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(one, records))
    return [r for r in results if isinstance(r, CropEntry)], [r for r in results if isinstance(r, SkippedEntry)]
