"""Reader arguments are checked before decoding: one clear error, never a silent substitute."""

import pytest

import vidsel.io as vio
from tests.video_factory import make_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("arguments") / "clip.mp4", num_frames=8)


@pytest.mark.parametrize("rate", [0, -1, 1.5, True])
def test_read_audio_rejects_a_non_positive_sample_rate(clip, rate):
    with pytest.raises(ValueError, match="sample_rate must be a positive int"):
        vio.read_audio(clip.path, sample_rate=rate)


def test_read_audio_keeps_a_valid_sample_rate(clip):
    waveform, rate = vio.read_audio(clip.path, sample_rate=8000)
    assert rate == 8000 and waveform.shape[0] == 1


def test_read_compressed_many_rejects_a_single_path(clip):
    with pytest.raises(TypeError, match="single path"):
        vio.read_compressed_many(str(clip.path), 2, progress=False)
    with pytest.raises(TypeError, match="single path"):
        vio.read_compressed_many(clip.path, 2, progress=False)
