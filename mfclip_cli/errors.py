"""Exceptions whose message a user can act on. The CLI prints them without a traceback and exits 2."""

from __future__ import annotations


class MfclipError(Exception):
    """Base class: a failure the user can fix (bad option, missing file, incompatible weights)."""


class WeightsNotFound(MfclipError):
    """Pretrained or checkpoint weights are not on this machine (and downloads are off)."""


class CheckpointError(MfclipError):
    """A checkpoint file is unreadable, unsafe (pickle) or does not match the expected architecture."""


class DatasetError(MfclipError):
    """A dataset root or manifest cannot be read or does not follow a known layout."""


class MediaError(MfclipError):
    """One input file could not be decoded. Carries a short machine-readable ``code``."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
