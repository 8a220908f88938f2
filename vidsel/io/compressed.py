"""Compressed-domain sampling for MM-ViT (§3.1–3.2): I-frames, motion vectors, residuals and audio.

Sampling (MM-ViT / CoViAR): the video is cut into T equal time segments. For segment t the reader takes
the first P-frame at or after the segment's middle frame (else the last P-frame before it), its motion
vectors and its residual, plus the I-frame that opens that P-frame's GOP. The residual is the decoded
P-frame minus its motion-compensated prediction from its reference (MM-ViT §3.1), computed in RGB.

B-frames: they are decoded (they sit between the anchors in display order) but never sampled, and their
bi-directional vectors are not used. A P-frame's reference is the previous I- or P-frame in display
order (`reference_timestamps`), exact for MPEG-4 Part 2. When B-frames separate a P-frame from its
reference, its vectors span several frame intervals. FFmpeg does not export which reference an H.264
block used (libx264 defaults to 3), so for H.264 each 8×8 block of the residual is compensated from
whichever of the last 4 I/P-frames predicts it best; B-frames used as references (b-pyramid) are not
candidates, and blocks predicted from them get a larger residual than the codec's. The motion vectors
are the codec's in every case.

Motion sign convention: forward, like optical flow; see vidsel.io.motion.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field

import av
import numpy as np
import torch

from vidsel.io._container import FORWARD_PREDICTED, Demuxed, decode_video, open_demuxed, picture_type
from vidsel.io._util import check_count, map_with_progress, parse_size, resize_images, resize_motion
from vidsel.io.audio import decode_audio, segment_audio
from vidsel.io.errors import NoMotionVectorsError, VideoReadError
from vidsel.io.frames import segment_centers, stack_channels_first, to_rgb
from vidsel.io.motion import block_motion, exported_vectors, residual

# Codec block granularity g of the returned motion field: H.264 codes partitions down to 4×4; MPEG-4
# Part 2 / MPEG-2 / H.263 code 16×16 macroblocks (MPEG-4's optional 8×8 "4MV" blocks are averaged).
DEFAULT_BLOCK_SIZE = {"h264": 4}
FALLBACK_BLOCK_SIZE = 16
# Candidate references per P-frame: H.264 may predict each partition from any of up to 16 earlier
# frames (libx264's default is 3) without FFmpeg exporting which; other codecs use one.
MAX_REFERENCES = {"h264": 4}


@dataclass
class CompressedClip:
    """T compressed-domain samples of one video (MM-ViT's V = {I, M, R, A}, §3.2).

    iframes:   (T, 3, H, W) uint8 RGB I-frames.
    motion:    (T, 2, H/g, W/g) float32 forward motion in pixels of the output size (channel 0 = x, 1 = y;
               content at p in the reference is at p + motion in the P-frame), one vector per g×g block
               (ceil(H/g) rows at native size when H is not a multiple of g; intra blocks are 0).
    block_size: g. residual: (T, 3, H, W) int16, P-frame − motion-compensated prediction, in [-255, 255].
    audio:     (T, S) float32 mono waveform, segment t spanning the same time as visual segment t; None when
               the file has no audio or audio=False. sample_rate: Hz of `audio` (None without audio).
    pict_types: picture type of each sampled motion/residual frame ("P"; "I" for the intra fallback).
    timestamps: seconds from the first video frame to each sampled P-frame.
    iframe_timestamps / reference_timestamps: the same for the I-frames and the P-frames' references.
    """

    iframes: torch.Tensor
    motion: torch.Tensor
    block_size: int
    residual: torch.Tensor
    audio: torch.Tensor | None
    sample_rate: int | None
    pict_types: list[str]
    timestamps: list[float]
    iframe_timestamps: list[float] = field(default_factory=list)
    reference_timestamps: list[float] = field(default_factory=list)
    path: str | None = None

    @property
    def num_segments(self) -> int:
        return int(self.iframes.shape[0])


@dataclass
class _Sample:
    """The frames behind one segment, still as decoded av.VideoFrames (converted after decoding)."""

    iframe: tuple[int, av.VideoFrame]
    references: list[tuple[int, av.VideoFrame]]  # candidate references, nearest first
    predicted: tuple[int, av.VideoFrame] | None
    vectors: object = None
    kind: str = "P"

    @property
    def reference(self):
        return self.references[0] if self.references else None


def read_compressed(
    path,
    num_segments: int = 8,
    *,
    size=None,
    audio: bool = True,
    block_size: int | None = None,
    audio_rate: int | None = 16000,
    intra_fallback: bool = False,
) -> CompressedClip:
    """Reads T = num_segments (I-frame, motion, residual, audio) samples from a real video, decoding once.

    Args:
        path: an MPEG-4 Part 2 or H.264 file (any container FFmpeg reads).
        num_segments: T.
        size: None (native), an int (square) or (height, width); must be divisible by the block size.
            Frames and residuals are resized (antialiased bilinear), motion is rescaled and resampled.
        audio: also return T audio segments (mono) aligned with the visual segments.
        block_size: g of the motion grid; default 4 for H.264, 16 for other codecs.
        audio_rate: resample the audio to this rate (16 kHz, as VGGish expects); None keeps the file's.
        intra_fallback: for a video without P-frames carrying motion vectors (all-intra, or a codec that
            exports none), return its I-frames with zero motion and zero residual instead of raising.
    Returns a CompressedClip. Raises FileNotFoundError, VideoReadError / NoVideoStreamError (not a video,
    truncated, corrupt, zero-length) or NoMotionVectorsError, each naming the file.
    """
    check_count("num_segments", num_segments)
    size = parse_size(size)
    if block_size is not None:
        check_count("block_size", block_size)
    with open_demuxed(path, audio=audio, export_motion_vectors=True) as demuxed:
        g = block_size or DEFAULT_BLOCK_SIZE.get(demuxed.video.codec_context.name, FALLBACK_BLOCK_SIZE)
        if size is not None and (size[0] % g or size[1] % g):
            raise ValueError(f"size={size} must be divisible by the motion block size {g}")
        samples = _sample_segments(demuxed, num_segments, intra_fallback)
        clip = _assemble(demuxed, samples, g, size)
        if audio:
            decoded = decode_audio(demuxed, sample_rate=audio_rate, mono=True)
            if decoded is not None:
                waveform, rate, start = decoded
                clip.audio = segment_audio(waveform, rate, start, demuxed.segment_bounds(num_segments))
                clip.sample_rate = rate
    return clip


def read_compressed_many(
    paths, num_segments: int = 8, *, progress: bool = True, errors: str = "raise", **kwargs
) -> list[CompressedClip | None]:
    """read_compressed over many files (each decoded once) with a tqdm progress bar.

    errors="skip" turns a bad file into a warning and a None entry; kwargs go to read_compressed.
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise TypeError(f"paths must be a list of files, got the single path {paths!r}; use read_compressed for one")
    return map_with_progress(
        lambda p: read_compressed(p, num_segments, **kwargs), paths, progress=progress, errors=errors,
        description="read_compressed",
    )


def _sample_segments(demuxed: Demuxed, num_segments: int, intra_fallback: bool) -> list[_Sample]:
    """Decodes the video once and picks each segment's (I-frame, reference, P-frame)."""
    centers = segment_centers(demuxed.num_frames, num_segments)
    max_references = MAX_REFERENCES.get(demuxed.video.codec_context.name, 1)
    anchors: collections.deque = collections.deque(maxlen=max_references)  # recent I/P-frames, nearest first
    chosen: list[_Sample | None] = [None] * num_segments
    intra: list[tuple[int, av.VideoFrame] | None] = [None] * num_segments  # for the fallback
    last_iframe = last_anchor = last_candidate = None
    any_vectors = False
    for index, frame in decode_video(demuxed):
        kind = picture_type(frame)
        if kind in ("I", "SI"):
            last_iframe = last_anchor = (index, frame)
            anchors.appendleft(last_anchor)
        elif kind in FORWARD_PREDICTED:
            vectors = exported_vectors(frame)
            any_vectors = any_vectors or vectors is not None
            if last_anchor is not None:
                last_candidate = _Sample(last_iframe or last_anchor, list(anchors), (index, frame), vectors, kind)
            last_anchor = (index, frame)
            anchors.appendleft(last_anchor)
        is_candidate = last_candidate is not None and last_candidate.predicted[0] == index
        for t, center in enumerate(centers):
            if center > index:
                continue
            if intra[t] is None and last_iframe is not None:
                intra[t] = last_iframe
            if chosen[t] is None and is_candidate:  # first P-frame at or after the segment's middle
                chosen[t] = last_candidate
        if all(c is not None for c in chosen):
            break
    if last_candidate is None or not any_vectors:
        return _intra_samples(demuxed, intra, intra_fallback, has_predicted=last_candidate is not None)
    return [c if c is not None else last_candidate for c in chosen]


def _intra_samples(demuxed: Demuxed, intra: list, intra_fallback: bool, has_predicted: bool) -> list[_Sample]:
    codec = demuxed.video.codec_context.name
    if has_predicted:
        reason = f"its {codec} P-frames carry no motion vectors (FFmpeg's {codec} decoder does not export them)"
    else:
        reason = f"it has no P-frames (all-intra {codec} stream), so there are no motion vectors or residuals"
    if not intra_fallback:
        raise NoMotionVectorsError(
            demuxed.path, reason + "; pass intra_fallback=True for zero motion/residual, or use read_frames"
        )
    if all(i is None for i in intra):
        raise VideoReadError(demuxed.path, "no I-frame could be decoded")
    first = next(i for i in intra if i is not None)
    return [_Sample(i or first, [], None, None, "I") for i in intra]


def _check_one_size(path: str, samples: list[_Sample]) -> None:
    """VideoReadError when the chosen frames differ in size: a stream whose resolution changes mid-way (or
    a damaged one whose decoder says so) has no motion field or residual between frames of two sizes."""
    entries = [e for s in samples for e in (s.iframe, s.predicted, *s.references) if e is not None]
    sizes = sorted({(entry[1].width, entry[1].height) for entry in entries})
    if len(sizes) > 1:
        listed = ", ".join(f"{w}x{h}" for w, h in sizes)
        raise VideoReadError(path, f"the frame size changes mid-stream ({listed}): motion vectors and residuals "
                                   "need frames of one size (read_frames resizes such streams)")


def _assemble(demuxed: Demuxed, samples: list[_Sample], g: int, size) -> CompressedClip:
    """Converts the chosen frames to tensors: RGB I-frames, block motion, residuals (native size), resized."""
    _check_one_size(demuxed.path, samples)
    rgb_cache: dict[int, np.ndarray] = {}
    motion_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def rgb(entry):
        if entry[0] not in rgb_cache:
            rgb_cache[entry[0]] = to_rgb(entry[1])
        return rgb_cache[entry[0]]

    iframes = [rgb(s.iframe) for s in samples]
    height, width = iframes[0].shape[:2]
    rows, cols = -(-height // g), -(-width // g)
    motions, residuals = [], []
    for s in samples:
        if s.predicted is None:
            motions.append(np.zeros((2, rows, cols), np.float32))
            residuals.append(np.zeros((height, width, 3), np.int16))
            continue
        index = s.predicted[0]
        if index not in motion_cache:
            block, dense, _ = block_motion(s.vectors, height, width, g)
            references = [rgb(r) for r in s.references]
            motion_cache[index] = (block, residual(rgb(s.predicted), references, dense))
        motions.append(motion_cache[index][0])
        residuals.append(motion_cache[index][1])
    motion = torch.from_numpy(np.stack(motions))
    if size is not None:
        motion = resize_motion(motion, (height, width), size, g)
    origin = demuxed.start_time

    def seconds(entry):
        return round(demuxed.frame_times[entry[0]] - origin, 6) if entry is not None else None

    return CompressedClip(
        iframes=resize_images(stack_channels_first(iframes), size),
        motion=motion.contiguous(),
        block_size=g,
        residual=resize_images(stack_channels_first(residuals), size),
        audio=None,
        sample_rate=None,
        pict_types=[s.kind for s in samples],
        timestamps=[seconds(s.predicted or s.iframe) for s in samples],
        iframe_timestamps=[seconds(s.iframe) for s in samples],
        reference_timestamps=[seconds(s.reference) for s in samples],
        path=demuxed.path,
    )
