"""Audio in vidsel.io: read_audio and the T segments of read_compressed lining up with the video."""

import numpy as np
import pytest
import torch

import vidsel.io as vio
from tests.video_factory import make_video

SEGMENTS = 4  # over a 2 s video: 0.5 s per segment
ONSET = 1.1  # seconds on the video clock


def onset_tone(t):
    """Silence, then a cosine (full amplitude at its first sample) from ONSET seconds."""
    return np.where(t >= ONSET, 0.5 * np.cos(2 * np.pi * 500 * (t - ONSET)), 0.0)


def stepped_tones(frequencies, segment):
    def waveform(t):
        piece = np.minimum(t // segment, len(frequencies) - 1).astype(int)
        return 0.5 * np.sin(2 * np.pi * np.asarray(frequencies)[piece] * t)

    return waveform


@pytest.fixture(scope="module")
def pcm_video(tmp_path_factory):
    """Exact PCM audio in Matroska, starting 0.25 s after the first video frame."""
    path = tmp_path_factory.mktemp("audio") / "pcm.mkv"
    return make_video(path, audio=lambda t: onset_tone(t + 0.25), audio_codec="pcm_s16le", audio_delay=0.25)


def test_segments_line_up_with_video_time(pcm_video):
    clip = vio.read_compressed(pcm_video.path, SEGMENTS, audio_rate=None)
    rate = clip.sample_rate
    assert rate == 16000 and clip.audio.shape == (SEGMENTS, rate // 2)
    flat = clip.audio.flatten()
    # nothing before the audio stream starts (0.25 s), silence until the onset, the tone right at it
    first_sound = int(np.flatnonzero(flat.abs().numpy() > 0.05)[0])
    assert abs(first_sound - ONSET * rate) <= 1
    assert flat[: int(0.25 * rate)].abs().max() == 0
    # segment t holds exactly the waveform's samples of [t/2, (t+1)/2) s on the video clock
    waveform, _ = vio.read_audio(pcm_video.path)
    delay = int(0.25 * rate)
    torch.testing.assert_close(flat[delay:], waveform[0, : flat.numel() - delay], atol=0, rtol=0)


@pytest.mark.parametrize("rate", [8000, 22050])
def test_resampling_keeps_alignment(pcm_video, rate):
    clip = vio.read_compressed(pcm_video.path, SEGMENTS, audio_rate=rate)
    assert clip.sample_rate == rate and clip.audio.shape == (SEGMENTS, rate // 2)
    flat = clip.audio.flatten().abs().numpy()
    first_sound = int(np.flatnonzero(flat > 0.05)[0])
    assert abs(first_sound - ONSET * rate) <= 2  # the resampling filter's ringing, not a delay


def test_segments_line_up_after_resampling_aac(tmp_path):
    """AAC at 22.05 kHz, resampled to 16 kHz: each segment holds its own tone."""
    frequencies = [400.0, 1000.0, 1800.0, 2600.0]
    video = make_video(tmp_path / "aac.mp4", audio=stepped_tones(frequencies, 0.5), sample_rate=22050)
    clip = vio.read_compressed(video.path, SEGMENTS)
    assert clip.sample_rate == 16000 and clip.audio.shape == (SEGMENTS, 8000)
    for t, expected in enumerate(frequencies):
        middle = clip.audio[t, 800:-800].numpy()  # 50 ms margins: codec transitions at the boundaries
        spectrum = np.abs(np.fft.rfft(middle * np.hanning(middle.size)))
        peak = np.fft.rfftfreq(middle.size, 1 / 16000)[spectrum.argmax()]
        assert abs(peak - expected) <= 5, (t, peak, expected)


def test_no_audio(tmp_path, pcm_video):
    silent = make_video(tmp_path / "silent.mp4", audio=None)
    clip = vio.read_compressed(silent.path, SEGMENTS)
    assert clip.audio is None and clip.sample_rate is None
    assert vio.read_compressed(pcm_video.path, SEGMENTS, audio=False).audio is None
    with pytest.raises(vio.VideoReadError, match="silent.mp4.*no audio"):
        vio.read_audio(silent.path)


def test_read_audio(pcm_video, tmp_path):
    waveform, rate = vio.read_audio(pcm_video.path)
    assert rate == 16000 and waveform.dtype == torch.float32 and waveform.shape[0] == 1
    assert waveform.shape[1] == 2 * rate  # the factory writes 2 s of audio (from 0.25 s to 2.25 s)
    resampled, new_rate = vio.read_audio(pcm_video.path, sample_rate=8000)
    assert new_rate == 8000 and abs(resampled.shape[1] - waveform.shape[1] / 2) < 64
    # audio-only files are fine for read_audio
    import av

    path = str(tmp_path / "tone.wav")
    with av.open(path, "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        stream.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(np.full((1, 2 * 800), 1000, np.int16), format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 8000, 0
        for packet in list(stream.encode(frame)) + list(stream.encode()):
            container.mux(packet)
    stereo, stereo_rate = vio.read_audio(path, mono=False)
    assert stereo_rate == 8000 and stereo.shape == (2, 800)
    torch.testing.assert_close(stereo, torch.full((2, 800), 1000 / 32768))
