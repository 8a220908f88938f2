"""vidsel.io: reading real video files through PyAV (FFmpeg), each file decoded once.

- ``read_compressed(path, num_segments=8, *, size=None, audio=True) -> CompressedClip``: MM-ViT's
  compressed-domain modalities (I-frames, motion vectors, residuals, audio segments).
- ``read_frames(path, num_frames, *, size=None) -> (T, 3, H, W) uint8``: uniform RGB sampling.
- ``read_audio(path, *, sample_rate=None, mono=True) -> (waveform (C, N) float32, rate)``.
- ``read_compressed_many`` / ``read_frames_many``: the same over many files with a tqdm progress bar.

Bad files raise FileNotFoundError or a VideoReadError subclass whose message starts with the path.
"""

from vidsel.io.audio import read_audio
from vidsel.io.compressed import CompressedClip, read_compressed, read_compressed_many
from vidsel.io.errors import NoMotionVectorsError, NoVideoStreamError, VideoReadError
from vidsel.io.frames import read_frames, read_frames_many

__all__ = [
    "CompressedClip",
    "NoMotionVectorsError",
    "NoVideoStreamError",
    "VideoReadError",
    "read_audio",
    "read_compressed",
    "read_compressed_many",
    "read_frames",
    "read_frames_many",
]
