"""Bad input to the vidsel.io readers: a clear error naming the file (or a documented fallback), never a crash."""

import os

import av
import numpy as np
import pytest
import torch

import vidsel.io as vio
from tests.video_factory import make_video

READERS = {
    "read_compressed": lambda p: vio.read_compressed(p, 4),
    "read_frames": lambda p: vio.read_frames(p, 4),
}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("errors") / "good.mp4", codec="mpeg4")


def truncated_copy(source, destination, fraction):
    data = open(source, "rb").read()
    open(destination, "wb").write(data[: int(len(data) * fraction)])
    return str(destination)


@pytest.mark.parametrize("reader", READERS)
def test_missing_file(reader, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here.mp4"):
        READERS[reader](str(tmp_path / "nothing_here.mp4"))


@pytest.mark.parametrize("reader", READERS)
def test_directory_and_empty_file(reader, tmp_path):
    with pytest.raises(vio.VideoReadError, match="directory"):
        READERS[reader](tmp_path)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(vio.VideoReadError, match="empty.mp4.*0 bytes"):
        READERS[reader](empty)


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("name, content", [("notes.txt", b"just some text\n" * 50), ("noise.mp4", None)])
def test_not_a_media_file(reader, name, content, tmp_path):
    path = tmp_path / name
    path.write_bytes(content if content is not None else np.random.default_rng(0).bytes(20000))
    with pytest.raises(vio.VideoReadError, match=name) as raised:
        READERS[reader](path)
    assert raised.value.path == str(path)


@pytest.mark.parametrize("reader", READERS)
def test_audio_only_file(reader, tmp_path):
    path = str(tmp_path / "speech.wav")
    with av.open(path, "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        for packet in list(stream.encode(frame)) + list(stream.encode()):
            container.mux(packet)
    with pytest.raises(vio.NoVideoStreamError, match="speech.wav.*no video stream"):
        READERS[reader](path)


@pytest.mark.parametrize("reader", READERS)
def test_truncated_mp4_index_at_end(reader, good, tmp_path):
    path = truncated_copy(good.path, tmp_path / "cut.mp4", 0.6)  # the moov index is lost
    with pytest.raises(vio.VideoReadError, match="cut.mp4"):
        READERS[reader](path)


@pytest.mark.parametrize("reader", READERS)
def test_truncated_mp4_index_first(reader, tmp_path):
    source = make_video(tmp_path / "fast.mp4", container_options={"movflags": "faststart"})
    path = truncated_copy(source.path, tmp_path / "fast_cut.mp4", 0.6)  # index intact, media cut
    with pytest.raises(vio.VideoReadError, match="fast_cut.mp4.*truncated"):
        READERS[reader](path)


@pytest.mark.parametrize("reader", READERS)
def test_truncated_mkv(reader, tmp_path):
    source = make_video(tmp_path / "clip.mkv")
    path = truncated_copy(source.path, tmp_path / "clip_cut.mkv", 0.45)
    with pytest.raises(vio.VideoReadError, match="clip_cut.mkv.*truncated"):
        READERS[reader](path)


@pytest.mark.parametrize("reader", READERS)
def test_zero_length_video_stream(reader, tmp_path):
    path = str(tmp_path / "no_frames.mkv")
    with av.open(path, "w") as container:
        video = container.add_stream("mpeg4", rate=12)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        audio = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        for packet in list(audio.encode(frame)) + list(audio.encode()):
            container.mux(packet)
    with pytest.raises(vio.VideoReadError, match="no_frames.mkv.*zero-length"):
        READERS[reader](path)


def test_all_intra_stream(tmp_path):
    video = make_video(tmp_path / "intra.mp4", gop=1)
    with pytest.raises(vio.NoMotionVectorsError, match="intra.mp4.*no P-frames"):
        vio.read_compressed(video.path, 4)
    clip = vio.read_compressed(video.path, 4, intra_fallback=True)  # the documented fallback
    assert clip.pict_types == ["I"] * 4
    assert clip.motion.shape == (4, 2, 4, 6) and not clip.motion.any()
    assert clip.residual.shape == (4, 3, 64, 96) and not clip.residual.any()
    assert torch.equal(clip.iframes, vio.read_frames(video.path, 4))  # every frame is an I-frame
    assert clip.audio.shape == (4, 8000)
    assert vio.read_frames(video.path, 4).shape == (4, 3, 64, 96)  # pixels are still readable


def test_codec_without_motion_vector_export(tmp_path):
    video = make_video(tmp_path / "vp8.webm", codec="libvpx", audio=None)
    with pytest.raises(vio.NoMotionVectorsError, match="vp8.webm.*vp8.*do(es)? not export"):
        vio.read_compressed(video.path, 4)
    assert vio.read_compressed(video.path, 4, intra_fallback=True).pict_types == ["I"] * 4


def test_bad_arguments(good):
    with pytest.raises(ValueError, match="num_segments"):
        vio.read_compressed(good.path, 0)
    with pytest.raises(TypeError, match="num_segments"):
        vio.read_compressed(good.path, 2.5)
    with pytest.raises(TypeError, match="num_frames"):
        vio.read_frames(good.path, "4")
    with pytest.raises(TypeError, match="size"):
        vio.read_frames(good.path, 4, size=(32,))
    with pytest.raises(ValueError, match="size"):
        vio.read_frames(good.path, 4, size=0)
    with pytest.raises(TypeError, match="path"):
        vio.read_compressed(None)
    with pytest.raises(ValueError, match="block_size"):
        vio.read_compressed(good.path, 4, block_size=0)
    with pytest.raises(ValueError, match="errors"):
        vio.read_compressed_many([good.path], errors="ignore")


def test_errors_are_value_errors_with_path(tmp_path):
    path = tmp_path / "bad.mp4"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError) as raised:
        vio.read_compressed(path)
    assert str(raised.value).startswith(os.fspath(path))
