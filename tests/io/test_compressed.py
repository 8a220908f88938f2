"""vidsel.io.read_compressed on real MPEG-4 and H.264 files encoded by tests/video_factory.py."""

import av
import numpy as np
import pytest
import torch

import vidsel.io as vio
from tests.video_factory import make_video

SEGMENTS = 4


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("compressed")
    return {
        # MM-ViT's setting: MPEG-4 Part 2, I- and P-frames only.
        "mpeg4": make_video(root / "mpeg4.mp4", codec="mpeg4", motion=(2, -2)),
        # Lossless H.264, one reference frame: decoded frames equal the sources, compensation is exact.
        "h264_lossless": make_video(
            root / "lossless.mp4", codec="libx264", motion=(-2, 2), options={"crf": "0", "refs": "1"}
        ),
        # Lossless H.264 with libx264's default 3 reference frames: blocks may skip back 2 or 3 frames.
        "h264_multiref": make_video(root / "multiref.mp4", codec="libx264", motion=(2, -2), options={"crf": "0"}, seed=1),
        # Default-quality H.264 with B-frames between the anchors.
        "h264_bframes": make_video(
            root / "bframes.mp4", codec="libx264", motion=(2, 2), bframes=2, gop=24, options={"refs": "1"}
        ),
    }


def decoded_by_pyav(path):
    """{display time in seconds from the first frame: (pict type, (3, H, W) uint8 RGB)} by plain PyAV."""
    out = {}
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            out[round(float(frame.time), 6)] = (int(frame.pict_type), frame.to_ndarray(format="rgb24"))
    first = min(out)
    return {round(t - first, 6): v for t, v in out.items()}


def frame_distance(clip, video):
    """How many frame intervals separate each sampled P-frame from its reference."""
    return [round((p - r) * video.fps) for p, r in zip(clip.timestamps, clip.reference_timestamps)]


def test_fields_shapes_and_dtypes(videos):
    video = videos["mpeg4"]
    clip = vio.read_compressed(video.path, SEGMENTS)
    height, width = video.frames.shape[1:3]
    assert clip.iframes.shape == (SEGMENTS, 3, height, width) and clip.iframes.dtype == torch.uint8
    assert clip.block_size == 16
    assert clip.motion.shape == (SEGMENTS, 2, height // 16, width // 16) and clip.motion.dtype == torch.float32
    assert clip.residual.shape == (SEGMENTS, 3, height, width) and clip.residual.dtype == torch.int16
    assert clip.audio.dtype == torch.float32 and clip.audio.shape == (SEGMENTS, 8000) and clip.sample_rate == 16000
    assert clip.pict_types == ["P"] * SEGMENTS and clip.num_segments == SEGMENTS
    assert len(clip.timestamps) == len(clip.iframe_timestamps) == len(clip.reference_timestamps) == SEGMENTS
    h264 = vio.read_compressed(videos["h264_lossless"].path, SEGMENTS, audio=False)
    assert h264.block_size == 4 and h264.motion.shape == (SEGMENTS, 2, height // 4, width // 4)
    assert h264.audio is None and h264.sample_rate is None


@pytest.mark.parametrize("name", ["mpeg4", "h264_lossless", "h264_bframes"])
def test_motion_median_equals_known_motion(videos, name):
    """Forward convention: content translating by (dx, dy) per frame gives motion (dx, dy) per frame of
    distance between the P-frame and its reference."""
    video = videos[name]
    clip = vio.read_compressed(video.path, SEGMENTS, audio=False)
    median = clip.motion.flatten(2).median(dim=-1).values  # (T, 2)
    expected = torch.tensor([[video.motion[0] * d, video.motion[1] * d] for d in frame_distance(clip, video)])
    assert torch.equal(median, expected.float()), (median, expected)


def test_b_frames_are_skipped(videos):
    video = videos["h264_bframes"]
    clip = vio.read_compressed(video.path, SEGMENTS, audio=False)
    decoded = decoded_by_pyav(video.path)
    assert any(kind == 3 for kind, _ in decoded.values()), "the encoder produced no B-frame"
    assert clip.pict_types == ["P"] * SEGMENTS
    for t in clip.timestamps + clip.reference_timestamps:
        assert decoded[round(t, 6)][0] in (1, 2)  # sampled frames and references are I or P, never B
    assert max(frame_distance(clip, video)) > 1  # B-frames sat between a P-frame and its reference


@pytest.mark.parametrize("name", ["mpeg4", "h264_lossless", "h264_bframes"])
def test_iframes_equal_pyav_decoded_frames(videos, name):
    video = videos[name]
    clip = vio.read_compressed(video.path, SEGMENTS, audio=False)
    decoded = decoded_by_pyav(video.path)
    for t, when in enumerate(clip.iframe_timestamps):
        kind, rgb = decoded[round(when, 6)]
        assert kind == 1
        assert torch.equal(clip.iframes[t], torch.from_numpy(rgb).permute(2, 0, 1))
        # the I-frame opens the sampled P-frame's GOP: no other I-frame between them
        between = [k for s, (k, _) in decoded.items() if when < s < clip.timestamps[t]]
        assert 1 not in between


def interior(tensor, motion, margin=4):
    """Crops away the borders where content enters the frame (not predictable from the reference)."""
    pad = margin + 3 * max(abs(m) for m in motion)
    return tensor[..., pad:-pad, pad:-pad]


@pytest.mark.parametrize("name", ["h264_lossless", "h264_multiref"])
def test_residual_exactly_zero_where_compensation_is_exact(videos, name):
    """With several references the reader finds each block's reference (FFmpeg does not say which)."""
    video = videos[name]
    clip = vio.read_compressed(video.path, SEGMENTS, audio=False)
    assert interior(clip.residual, video.motion).abs().max() == 0
    assert clip.residual.abs().max() > 0  # the entering borders are not predictable
    if name == "h264_multiref":  # some blocks were predicted from 2+ frames back
        assert (clip.motion[:, 0].abs() > abs(video.motion[0])).any()


def test_residual_near_zero_lossy(videos):
    for name in ("mpeg4", "h264_bframes"):
        video = videos[name]
        clip = vio.read_compressed(video.path, SEGMENTS, audio=False)
        inner = interior(clip.residual, video.motion).abs().float()
        assert inner.mean() < 2.0, (name, inner.mean())
        assert clip.residual.abs().float().mean() > inner.mean()


def test_residual_definition_against_pyav_frames(videos):
    """residual = P-frame − reference shifted by the coded motion, on PyAV's own decoded frames."""
    video = videos["mpeg4"]
    clip = vio.read_compressed(video.path, SEGMENTS, audio=False)
    decoded = decoded_by_pyav(video.path)
    dx, dy = video.motion
    for t in range(SEGMENTS):
        predicted = decoded[round(clip.timestamps[t], 6)][1].astype(np.int16)
        reference = decoded[round(clip.reference_timestamps[t], 6)][1].astype(np.int16)
        height, width = reference.shape[:2]
        expected = predicted[2:-2, 2:-2] - reference[2 - dy : height - 2 - dy, 2 - dx : width - 2 - dx]
        dense = clip.motion[t].repeat_interleave(16, 1).repeat_interleave(16, 2)[:, 2:-2, 2:-2]
        exact = (dense[0] == dx) & (dense[1] == dy)  # blocks coded with the true motion
        assert exact.float().mean() > 0.5
        got = clip.residual[t].permute(1, 2, 0)[2:-2, 2:-2]
        assert torch.equal(got[exact], torch.from_numpy(expected)[exact])


def test_sampling_follows_segments(videos):
    video = videos["mpeg4"]
    clip = vio.read_compressed(video.path, SEGMENTS, audio=False)
    for t, when in enumerate(clip.timestamps):
        middle = (t + 0.5) * video.duration / SEGMENTS
        assert middle - 1 / video.fps <= when < (t + 1) * video.duration / SEGMENTS
        assert clip.iframe_timestamps[t] <= clip.reference_timestamps[t] < when
    more = vio.read_compressed(video.path, 30, audio=False)  # more segments than P-frames per segment
    assert more.motion.shape[0] == 30 and more.timestamps == sorted(more.timestamps)


def test_resize_scales_motion(videos):
    video = videos["mpeg4"]
    native = vio.read_compressed(video.path, SEGMENTS)
    small = vio.read_compressed(video.path, SEGMENTS, size=(32, 48))
    assert small.iframes.shape == (SEGMENTS, 3, 32, 48) and small.residual.shape == (SEGMENTS, 3, 32, 48)
    assert small.motion.shape == (SEGMENTS, 2, 2, 3) and small.residual.dtype == torch.int16
    median = small.motion.flatten(2).median(dim=-1).values
    assert torch.equal(median, torch.tensor([[1.0, -1.0]] * SEGMENTS))  # half the pixels, half the motion
    assert small.timestamps == native.timestamps and torch.equal(small.audio, native.audio)
    square = vio.read_compressed(video.path, SEGMENTS, size=64, audio=False)
    assert square.iframes.shape[-2:] == (64, 64) and square.motion.shape[-2:] == (4, 4)
    with pytest.raises(ValueError, match="divisible"):
        vio.read_compressed(video.path, SEGMENTS, size=(40, 48))


def test_block_size_override(videos):
    video = videos["mpeg4"]
    coarse = vio.read_compressed(video.path, SEGMENTS, audio=False)
    fine = vio.read_compressed(video.path, SEGMENTS, block_size=8, audio=False)
    assert fine.block_size == 8
    assert torch.equal(fine.motion, coarse.motion.repeat_interleave(2, 2).repeat_interleave(2, 3))
    assert torch.equal(fine.residual, coarse.residual)


def test_read_compressed_many_progress(videos, tmp_path, capsys):
    paths = [videos["mpeg4"].path, videos["h264_lossless"].path]
    clips = vio.read_compressed_many(paths, SEGMENTS, audio=False)
    assert [c.path for c in clips] == paths
    assert torch.equal(clips[1].motion, vio.read_compressed(paths[1], SEGMENTS, audio=False).motion)
    assert "read_compressed" in capsys.readouterr().err  # the tqdm bar
    missing = str(tmp_path / "missing.mp4")
    with pytest.warns(UserWarning, match="missing.mp4"):
        skipped = vio.read_compressed_many([missing, paths[0]], SEGMENTS, progress=False, errors="skip")
    assert skipped[0] is None and skipped[1] is not None
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        vio.read_compressed_many([missing], SEGMENTS, progress=False)
