"""vidsel.io.read_frames: uniform RGB sampling equal to PyAV's own decoding."""

import av
import pytest
import torch

import vidsel.io as vio
from tests.video_factory import make_video


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("frames") / "clip.mp4", codec="libx264", bframes=2, num_frames=20, audio=None)


def pyav_frames(path):
    with av.open(str(path)) as container:
        return [torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1) for f in container.decode(video=0)]


def test_frames_equal_pyav_at_segment_middles(video):
    reference = pyav_frames(video.path)
    frames = vio.read_frames(video.path, 4)
    assert frames.shape == (4, 3, 64, 96) and frames.dtype == torch.uint8
    for t, index in enumerate([2, 7, 12, 17]):  # middle frame of each of 4 slices of 20 frames
        assert torch.equal(frames[t], reference[index])


def test_more_samples_than_frames_repeat(video):
    frames = vio.read_frames(video.path, 30)
    reference = pyav_frames(video.path)
    assert frames.shape[0] == 30
    assert torch.equal(frames[0], reference[0]) and torch.equal(frames[-1], reference[-1])


def test_resize(video):
    frames = vio.read_frames(video.path, 3, size=(32, 40))
    assert frames.shape == (3, 3, 32, 40) and frames.dtype == torch.uint8
    full = vio.read_frames(video.path, 3).float()
    resized = torch.nn.functional.interpolate(full, size=(32, 40), mode="bilinear", antialias=True)
    assert (frames.float() - resized).abs().max() <= 0.5 + 1e-3  # rounding only
    assert vio.read_frames(video.path, 2, size=48).shape[-2:] == (48, 48)


def test_read_frames_many(video, tmp_path, capsys):
    clips = vio.read_frames_many([video.path, video.path], 2)
    assert len(clips) == 2 and torch.equal(clips[0], clips[1])
    assert "read_frames" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="nope.mp4"):
        assert vio.read_frames_many([str(tmp_path / "nope.mp4")], 2, progress=False, errors="skip") == [None]
