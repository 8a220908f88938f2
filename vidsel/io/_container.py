"""One pass over a media file: open it, demux every packet once, decode the video packets in order.

The readers plan which frames they need from the packet timestamps (known after demuxing, before any
decoding), then decode the video packets a single time and keep only the planned frames, so no file is
ever reopened or re-seeked per sample. Packets are compressed data (a 10 s 224² clip is ~1 MB), so
holding them for the length of one read is cheap.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import av

from vidsel.io.errors import NoVideoStreamError, VideoReadError

# FFmpeg's AVPictureType values (PyAV 18 reports frame.pict_type as a plain int).
PICTURE_TYPES = {0: "?", 1: "I", 2: "P", 3: "B", 4: "S", 5: "SI", 6: "SP", 7: "BI"}
# Picture types predicted from one past reference (MPEG-4 S(GMC)-VOPs and H.264 SP slices behave like P).
FORWARD_PREDICTED = ("P", "S", "SP")
# Demuxers FFmpeg picks for plain text (by extension); their "video" is rendered text, never a recording.
TEXT_DEMUXERS = ("tty",)
# A gap between consecutive video timestamps beyond both bounds marks the timestamps as damaged (variable
# frame rate recordings pause for seconds, not for a thousand frame intervals and a minute at once).
MAX_FRAME_GAP_SECONDS = 60.0
MAX_FRAME_GAP_RATIO = 1000.0


def picture_type(frame: av.VideoFrame) -> str:
    """'I', 'P', 'B', ... for a decoded frame (PyAV may return an int or an enum)."""
    value = frame.pict_type
    if isinstance(value, str):
        return value
    name = getattr(value, "name", None)
    return name if isinstance(name, str) else PICTURE_TYPES.get(int(value), "?")


@dataclass
class Demuxed:
    """Every packet of one file, with the video timeline in display order.

    frame_times: presentation time in seconds of each video frame, display order, relative to nothing
    (the container's own clock); frame_duration: seconds per frame; video/audio: the PyAV streams.
    """

    path: str
    container: av.container.InputContainer
    video: av.video.stream.VideoStream | None
    audio: av.audio.stream.AudioStream | None
    video_packets: list = field(default_factory=list)
    audio_packets: list = field(default_factory=list)
    frame_times: list[float] = field(default_factory=list)
    frame_duration: float = 0.0
    pts_to_index: dict[int, int] | None = None

    @property
    def num_frames(self) -> int:
        return len(self.frame_times)

    @property
    def start_time(self) -> float:
        return self.frame_times[0]

    @property
    def duration(self) -> float:
        """Seconds from the first frame's start to the last frame's end."""
        return self.frame_times[-1] - self.frame_times[0] + self.frame_duration

    def segment_bounds(self, num_segments: int) -> list[tuple[float, float]]:
        """The [start, end) times (seconds, container clock) of `num_segments` equal slices of the video."""
        step = self.duration / num_segments
        return [(self.start_time + t * step, self.start_time + (t + 1) * step) for t in range(num_segments)]


def check_path(path) -> str:
    """Returns the path as str; FileNotFoundError / VideoReadError for missing, directory or 0-byte files."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(2, f"{path}: no such video file", path)
    if os.path.isdir(path):
        raise VideoReadError(path, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoReadError(path, "is empty (0 bytes)")
    return path


@contextlib.contextmanager
def open_demuxed(
    path, *, audio: bool, export_motion_vectors: bool = False, require_video: bool = True
) -> Iterator[Demuxed]:
    """Opens `path`, demuxes all its video (and, if `audio`, audio) packets, and closes it on exit.

    export_motion_vectors: ask FFmpeg's decoder for MOTION_VECTORS side data (`flags2=+export_mvs`).
    require_video=False lets audio-only files through (video is then None and the timeline empty).
    Raises FileNotFoundError, VideoReadError (not a media file, corrupt, truncated, no frames) or
    NoVideoStreamError, each naming the file.
    """
    path = check_path(path)
    try:
        # Damaged metadata is replaced, not raised as UnicodeDecodeError: the readers never use it.
        container = av.open(path, mode="r", metadata_errors="replace")
    except av.FFmpegError as error:
        raise VideoReadError(path, f"FFmpeg cannot open it as a media file ({error.strerror or error})") from error
    try:
        if not container.streams.video and not require_video:
            yield _demux_audio_only(path, container)
        else:
            yield _demux(path, container, audio=audio, export_motion_vectors=export_motion_vectors)
    finally:
        container.close()


def _check_decodable(path: str, stream) -> None:
    """VideoReadError when FFmpeg has no decoder for `stream` (None passes): a header naming no codec, or
    one FFmpeg does not know, as a damaged header does."""
    if stream is not None and stream.codec_context is None:
        raise VideoReadError(path, f"its {stream.type} stream #{stream.index} names a codec FFmpeg cannot decode "
                                   "(unknown codec id: a damaged or unsupported header)")


def _demux_audio_only(path: str, container) -> Demuxed:
    audio = container.streams.audio[0] if container.streams.audio else None
    _check_decodable(path, audio)
    demuxed = Demuxed(path=path, container=container, video=None, audio=audio)
    if audio is None:
        return demuxed
    try:
        demuxed.audio_packets = [p for p in container.demux(audio) if p.size > 0]
    except av.FFmpegError as error:
        raise VideoReadError(path, f"corrupt or truncated while demuxing ({error.strerror or error})") from error
    return demuxed


def _demux(path: str, container, *, audio: bool, export_motion_vectors: bool) -> Demuxed:
    if container.format.name in TEXT_DEMUXERS:
        raise VideoReadError(path, "is a text file, not a video (FFmpeg would render it as ANSI art)")
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise NoVideoStreamError(
            path, f"has no video stream (streams: {', '.join(kinds)}); it may be audio-only or truncated"
        )
    video = container.streams.video[0]
    audio_stream = container.streams.audio[0] if audio and container.streams.audio else None
    for stream in (video, audio_stream):
        _check_decodable(path, stream)
    options = {"flags2": "+export_mvs"} if export_motion_vectors else {}
    video.codec_context.options = options
    video.codec_context.thread_type = "AUTO"  # frame threads: same frames, same order, same side data
    demuxed = Demuxed(path=path, container=container, video=video, audio=audio_stream)
    last_end = 0.0  # seconds: where the packets of every stream stop (truncation check)
    seconds_per_tick = {s.index: float(s.time_base) for s in container.streams if s.time_base is not None}
    try:
        for packet in container.demux():  # every stream, so the truncation check sees the whole file
            if packet.size == 0:  # the demuxer's end-of-stream marker
                continue
            tick = seconds_per_tick.get(packet.stream.index)
            if packet.pts is not None and tick is not None:
                last_end = max(last_end, (packet.pts + (packet.duration or 0)) * tick)
            if packet.stream.index == video.index:
                demuxed.video_packets.append(packet)
            elif audio_stream is not None and packet.stream.index == audio_stream.index:
                demuxed.audio_packets.append(packet)
    except av.FFmpegError as error:
        raise VideoReadError(path, f"corrupt or truncated while demuxing ({error.strerror or error})") from error
    if not demuxed.video_packets:
        raise VideoReadError(path, "the video stream is zero-length (no packets)")
    _check_not_truncated(path, container, video, len(demuxed.video_packets), last_end)
    _build_timeline(demuxed)
    return demuxed


def _check_not_truncated(path: str, container, video, num_packets: int, last_end: float) -> None:
    """VideoReadError when the header promises clearly more than the file holds.

    Two header fields are compared with what was demuxed: the video frame count (MP4/MOV) and the
    container duration, only where the container stores it (MP4/MOV, Matroska/WebM; elsewhere FFmpeg
    guesses it from the bitrate). A cut losing under max(0.5 s, 10 %) of an MKV, or any cut of a format
    that stores neither (AVI without index, MPEG-TS, raw streams), is not detectable: the decodable
    prefix is read.
    """
    declared = video.frames
    if declared and num_packets < declared:
        raise VideoReadError(
            path, f"truncated: the header declares {declared} video frames but only {num_packets} could be read"
        )
    stores_duration = any(name in container.format.name for name in ("mov", "mp4", "matroska", "webm"))
    if container.duration and stores_duration:
        start = (container.start_time or 0) / av.time_base
        duration = container.duration / av.time_base
        found = last_end - start
        if duration - found > max(0.5, 0.1 * duration):
            raise VideoReadError(
                path, f"truncated: the header declares {duration:.2f} s but the packets end at {found:.2f} s"
            )


def _build_timeline(demuxed: Demuxed) -> None:
    video = demuxed.video
    rate = video.average_rate or video.guessed_rate or video.base_rate
    nominal = float(1 / rate) if rate else 1 / 25
    pts = [p.pts for p in demuxed.video_packets]
    if video.time_base is not None and all(v is not None for v in pts) and len(set(pts)) == len(pts):
        ordered = sorted(pts)
        base = float(video.time_base)
        times = [v * base for v in ordered]
        gaps = sorted(b - a for a, b in zip(times, times[1:]))
        median = gaps[len(gaps) // 2] if gaps else nominal
        if not gaps or gaps[-1] <= max(MAX_FRAME_GAP_SECONDS, MAX_FRAME_GAP_RATIO * median):
            demuxed.frame_times, demuxed.frame_duration = times, median
            demuxed.pts_to_index = {v: i for i, v in enumerate(ordered)}
            return
    # Raw streams without timestamps, or damaged ones (a jump no recording has, e.g. a flipped high bit of
    # an MPEG-TS PTS): frames are counted in the decoder's output order, times follow the nominal rate.
    demuxed.frame_times = [i * nominal for i in range(len(pts))]
    demuxed.frame_duration = nominal


def decode_video(demuxed: Demuxed) -> Iterator[tuple[int, av.VideoFrame]]:
    """Decodes every video packet once; yields (display index, frame) in display order.

    Stop iterating early to skip decoding the rest. Decoder errors become VideoReadError naming the file.
    """
    codec = demuxed.video.codec_context
    counter = 0
    packets = demuxed.video_packets + [None]  # None flushes the decoder's delayed frames
    for packet in packets:
        try:
            frames = codec.decode(packet)
        except av.FFmpegError as error:
            raise VideoReadError(demuxed.path, f"corrupt video data ({error.strerror or error})") from error
        for frame in frames:
            index = counter
            if demuxed.pts_to_index is not None and frame.pts in demuxed.pts_to_index:
                index = demuxed.pts_to_index[frame.pts]
            counter = index + 1
            if index >= demuxed.num_frames:
                return
            yield index, frame
