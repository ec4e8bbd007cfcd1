"""Inputs and safe decoding: walk paths into media items, decode images, sample video frames.

Images and videos are recognised by their first bytes (magic numbers); the file extension is only a
hint for files whose content is unknown. Decoding never trusts a file: every failure becomes a
:class:`~mfclip_cli.errors.MediaError` with a short ``code`` and a message naming the path.

Rooms: ``sniff`` (the extension table, magic numbers), ``discovery`` (paths, folders, globs, lists -> items),
``decode`` (images), ``video`` (frame sampling).
"""

from .decode import ALPHA_BACKGROUND, decode_image, decode_image_bytes
from .discovery import InputError, InputItem, collect_inputs, shard
from .sniff import IMAGE_EXTS, MEDIA_EXTS, VIDEO_EXTS, Kind, is_media_file, kind_from_extension, sniff_kind
from .video import (
    DEFAULT_VIDEO_FPS,
    VideoFrame,
    VideoFrames,
    iter_video_frames,
    quiet_video_decoders,
    video_info,
)

__all__ = [
    "ALPHA_BACKGROUND", "DEFAULT_VIDEO_FPS", "IMAGE_EXTS", "MEDIA_EXTS", "VIDEO_EXTS", "InputError", "InputItem",
    "Kind", "VideoFrame", "VideoFrames", "collect_inputs", "decode_image", "decode_image_bytes", "is_media_file",
    "iter_video_frames", "kind_from_extension", "quiet_video_decoders", "shard", "sniff_kind", "video_info",
]
