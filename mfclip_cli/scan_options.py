"""What `mfclip scan` is asked (:class:`ScanOptions`): its inputs and model, and every setting that changes what
it computes, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .errors import MfclipError

NO_FACE_POLICIES = ("skip", "full")


@dataclass(frozen=True)
class ScanOptions:
    """What a scan is asked: its inputs and model, and everything that changes what it computes.

    ``paths`` (files, folders, glob patterns) and ``from_file`` (a list of paths, '-': stdin) name the inputs;
    files found in folders or by patterns that are one of ``exclude`` and not media are skipped (the CLI passes
    its report paths: a previous run's report is not an input). ``weights`` is a checkpoint or an exported
    folder (``backend`` onnx). These four are the request; the other fields are echoed into the report's
    settings (with ``inputs``: the paths).
    """

    paths: tuple[str, ...] = ()
    weights: str | None = None
    from_file: str | None = None
    exclude: tuple[str, ...] = ()
    backend: str = "auto"
    device: str = "auto"
    batch_size: int = 32
    workers: int | None = None  # None: one per usable CPU
    threshold: float | None = None  # None: the checkpoint's
    uncertain_band: float = 0.0
    max_faces: int | None = None
    min_face: int | None = None  # None: the checkpoint's crop policy
    no_face: str = "skip"
    detector: str | None = None  # None: the checkpoint's crop policy
    fps: float | None = 1.0
    frames: int | None = 32
    video_top_frac: float = 0.25
    max_pixels: int = 100_000_000
    shard: tuple[int, int] | None = None
    provenance: bool = True  # read what each file claims (C2PA, generator metadata); never seen by the model
    explain: bool = False  # heat map + noise patch per face (videos: faces of the frames aggregated)

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", tuple(str(p) for p in self.paths))
        object.__setattr__(self, "exclude", tuple(str(p) for p in self.exclude))
        if self.no_face not in NO_FACE_POLICIES:
            raise MfclipError(f"unknown --no-face policy {self.no_face!r}; valid: {', '.join(NO_FACE_POLICIES)}")
        if self.batch_size < 1 or (self.workers is not None and self.workers < 1):
            raise MfclipError("--batch-size and --workers must be at least 1")
        if not 0.0 < self.video_top_frac <= 1.0:
            raise MfclipError("--video-top must be in (0, 1]")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:  # NaN fails too
            raise MfclipError(f"--threshold must be a number in [0, 1], got {self.threshold}")
        if not 0.0 <= self.uncertain_band <= 0.5:
            raise MfclipError(f"--uncertain-band must be in [0, 0.5] (a distance between probabilities), "
                              f"got {self.uncertain_band}")
        if self.max_faces is not None and self.max_faces < 1:
            raise MfclipError(f"--max-faces must be at least 1 (omit it to score every face), got {self.max_faces}")
        if self.min_face is not None and self.min_face < 0:
            raise MfclipError(f"--min-face must be >= 0 pixels, got {self.min_face}")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise MfclipError(f"--fps must be a positive number of frames per second (e.g. 1 or 0.5), got {self.fps}")
        if self.frames is not None and self.frames < 1:
            raise MfclipError(f"--frames must be at least 1 sampled frame per video, got {self.frames}")
        if self.max_pixels < 1:
            raise MfclipError(f"--max-pixels must be at least 1, got {self.max_pixels}")

    def settings(self) -> dict:
        """The options as the report's settings record them (without the request: inputs come as ``inputs``)."""
        request = ("paths", "weights", "from_file", "exclude")
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in fields(self) if f.name not in request}
