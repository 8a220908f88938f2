"""Errors raised by the vidsel.io readers. Every message starts with the offending file's path."""

from __future__ import annotations

import os


class VideoReadError(ValueError):
    """A file that exists but cannot be read as a video: not a media file, truncated, corrupt, empty.

    Subclasses ValueError (the file's content is the bad argument). `path` and `reason` are kept as attributes.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class NoVideoStreamError(VideoReadError):
    """The file is a readable media file without a video stream (e.g. audio only)."""


class NoMotionVectorsError(VideoReadError):
    """The video has no inter-predicted (P) frame carrying motion vectors: all-intra streams (MJPEG,
    I-frame-only encodes, still images) and codecs whose FFmpeg decoder does not export motion vectors."""
