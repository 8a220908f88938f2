"""compressed_patch_embed (MM-ViT §3.2 eq. 1–4): every backend against the reference, gradients, compile, errors."""

import importlib
import math

import pytest
import torch

from tests.helpers import (DTYPES, assert_close, compiled_backends, cpu_backends, device_backends,
                           fused_device_backends, non_contiguous)
from vidsel.nn import CompressedPatchEmbed, log_mel_features
from vidsel.ops import CompressedEmbedParams, compressed_patch_embed
from vidsel.ops._dispatch import supported
op_module = importlib.import_module("vidsel.ops.compressed_patch_embed")
from vidsel.reference import compressed_patch_embed as reference

SUPPORTED = supported(op_module.EMBED, op_module.EMBED_BACKWARD)
BACKENDS = compiled_backends(SUPPORTED)
ON_DEVICES = fused_device_backends(SUPPORTED)  # (device, impl): CPU tensors here, CUDA on a GPU machine


def make_case(batch=2, frames=2, height=16, width=32, patch=8, block=4, dim=16, feat=12, dtype=torch.float32,
              audio=True):
    def rand(*shape):
        return torch.randn(*shape, dtype=torch.float64).to(dtype)

    tokens = (height // patch) * (width // patch)
    inputs = [rand(batch, frames, 3, height, width), rand(batch, frames, 2, height // block, width // block),
              rand(batch, frames, 3, height, width), rand(batch, frames, feat) if audio else None]
    params = []
    for channels in (3, 2, 3):
        params += [rand(dim, channels, patch, patch) / patch, rand(dim), rand(frames, tokens, dim)]
    params += [rand(dim, feat), rand(dim), rand(frames, dim)] if audio else [None] * 3
    return inputs, CompressedEmbedParams(*params)


def run(inputs, params, impl, patch=8, expand_audio=True):
    return compressed_patch_embed(*inputs, params, patch=patch, expand_audio=expand_audio, impl=impl)


def as_list(out):
    return [t for t in (out if isinstance(out, tuple) else (out,)) if t is not None]


# (height, width, patch, block): block < patch, block = patch, block > patch, block not dividing patch, dense.
GEOMETRIES = [(16, 32, 8, 4), (16, 24, 8, 8), (32, 32, 8, 16), (24, 24, 8, 12), (8, 16, 8, 1)]


@pytest.mark.parametrize("device, impl", ON_DEVICES)
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("expand_audio", [True, False])
def test_matches_reference_float32(device, impl, geometry, expand_audio):
    height, width, patch, block = geometry
    inputs, params = make_case(height=height, width=width, patch=patch, block=block)
    expected = run(inputs, params, "reference", patch, expand_audio)
    actual = run(inputs, params, impl, patch, expand_audio)
    for a, e in zip(as_list(actual), as_list(expected), strict=True):
        assert a.shape == e.shape
        assert_close(a, e, scale=10)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES[1:])
def test_low_precision(device, impl, dtype):
    inputs, params = make_case()
    low = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    expected = run(inputs, params, "reference", expand_audio=False)
    actual = run([low(t) for t in inputs], CompressedEmbedParams(*map(low, params)), impl, expand_audio=False)
    for a, e in zip(actual, expected):
        assert a.dtype == dtype
        # Sums of 192 products rounded in low precision: a few ulps of the output magnitude.
        assert_close(a.float(), e, dtype=dtype, scale=8)


@pytest.mark.parametrize("device, impl", device_backends(SUPPORTED))
def test_single_frame_no_audio_and_non_contiguous(device, impl):
    inputs, params = make_case(batch=1, frames=1, audio=False)
    inputs = [non_contiguous(t) if t is not None else None for t in inputs]
    tokens = run(inputs, params, impl)
    assert tokens.shape == (1, 3, 1, 8, 16)
    visual, audio = run(inputs, params, impl, expand_audio=False)
    assert audio is None
    assert_close(visual, tokens)
    expected_iframe = reference.patch_embed(inputs[0], params.iframe_weight, params.iframe_bias, params.iframe_pos, 8)
    assert_close(tokens[:, 0], expected_iframe, scale=10)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="needs the C++ CPU backend")
@pytest.mark.parametrize("height, width, frames", [(128, 128, 3), (16, 16 * 181, 1)])
def test_cpu_projection_split_into_row_chunks(height, width, frames):
    """The float32 CPU path projects blocks of 96 patches: 192 rows split evenly (2 × 96), 181 rows (prime) as
    96 + a tail of 85 (not a multiple of the GEMM's 6-row register tile)."""
    inputs, params = make_case(frames=frames, height=height, width=width, patch=16, block=16)
    for expand_audio in (True, False):
        expected = run(inputs, params, "reference", 16, expand_audio)
        actual = run(inputs, params, "cpu", 16, expand_audio)
        for a, e in zip(as_list(actual), as_list(expected), strict=True):
            assert_close(a, e, scale=10)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="needs the C++ CPU backend")
def test_cpu_weight_gradient_over_row_chunks_and_output_blocks():
    """The float32 CPU weight gradient walks 256-row patch chunks and 96-row blocks of D: 362 rows per clip
    (256 + a tail of 106) and D = 100 (96 + 4) exercise every ragged edge, with two clips accumulating."""
    inputs, params = make_case(frames=2, height=16, width=16 * 181, patch=16, block=16, dim=100)
    grads = {}
    for backend in ("reference", "cpu"):
        weights = [t.clone().requires_grad_() for t in params]
        out = run(inputs, CompressedEmbedParams(*weights), backend, 16)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        grads[backend] = [w.grad for w in weights]
    for a, e in zip(grads["cpu"], grads["reference"], strict=True):
        assert_close(a, e, scale=20)


def test_audio_is_replicated_over_positions():
    inputs, params = make_case()
    tokens = run(inputs, params, "cpu" if "cpu" in BACKENDS else "reference")
    _, audio = run(inputs, params, "reference", expand_audio=False)
    expected = torch.nn.functional.linear(inputs[3], params.audio_weight, params.audio_bias) + params.audio_pos
    assert_close(audio, expected)
    assert_close(tokens[:, 3], expected.unsqueeze(2).expand_as(tokens[:, 3]), scale=10)


def test_motion_equals_embedding_of_upsampled_field():
    """The block-granular input gives exactly the tokens of the nearest-upsampled dense field (g = 1)."""
    inputs, params = make_case(block=4)
    dense = list(inputs)
    dense[1] = reference.upsample_motion(inputs[1], 16, 32)
    for impl in BACKENDS:
        assert_close(run(inputs, params, impl), run(dense, params, impl), scale=10)


@pytest.mark.parametrize("device, impl", device_backends(SUPPORTED))
@pytest.mark.parametrize("expand_audio", [True, False])
def test_gradcheck_float64(device, impl, expand_audio):
    inputs, params = make_case(batch=1, frames=2, height=8, width=16, patch=4, block=8, dim=3, feat=2,
                               dtype=torch.float64)
    leaves = [t.requires_grad_() for t in [*inputs, *params]]

    def fn(*tensors):
        return run(tensors[:4], CompressedEmbedParams(*tensors[4:]), impl, 4, expand_audio)

    assert torch.autograd.gradcheck(fn, leaves, fast_mode=True)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_gradients_match_reference_with_partial_input_grads(device, impl):
    inputs, params = make_case(block=16 // 2)
    grads = {}
    for backend in ("reference", impl):
        leaves = [t.clone() for t in inputs]
        leaves[1].requires_grad_()  # only motion among the inputs; all params
        weights = [t.clone().requires_grad_() for t in params]
        out = run(leaves, CompressedEmbedParams(*weights), backend)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        assert leaves[0].grad is None and leaves[3].grad is None
        grads[backend] = [leaves[1].grad] + [w.grad for w in weights]
    for a, e in zip(grads[impl], grads["reference"], strict=True):
        assert_close(a, e, scale=20)


def test_opcheck():
    inputs, params = make_case(batch=1, frames=1, height=8, width=16, dim=4, feat=3)
    for t in [*inputs, *params]:
        t.requires_grad_()
    for impl in cpu_backends(SUPPORTED):
        for expand_audio in (True, False):
            args = (*inputs, *params, 8, expand_audio, impl)
            torch.library.opcheck(op_module._embed, args)
    no_audio, params = make_case(batch=1, frames=1, height=8, width=16, dim=4, audio=False)
    torch.library.opcheck(op_module._embed, (*no_audio, *params, 8, True, cpu_backends(SUPPORTED)[-1]))


@pytest.mark.parametrize("impl", [b for b in BACKENDS if b == "cpu"] or ["reference"])
def test_compile_matches_eager(impl):
    inputs, params = make_case()
    leaves = [t.clone().requires_grad_() for t in params]

    def embed(iframe, motion, residual, audio_feat, *weights):
        visual, audio = compressed_patch_embed(iframe, motion, residual, audio_feat, CompressedEmbedParams(*weights),
                                               patch=8, expand_audio=False, impl=impl)
        return visual.sum(3) + audio.unsqueeze(1)

    compiled = torch.compile(embed, fullgraph=True, backend="aot_eager")
    eager_out = embed(*inputs, *leaves)
    compiled_out = compiled(*inputs, *leaves)
    assert_close(compiled_out, eager_out)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), leaves)
    compiled_grads = torch.autograd.grad(compiled_out.square().sum(), leaves)
    for a, e in zip(compiled_grads, eager_grads):
        assert_close(a, e)


def test_flop_counter_counts_the_reduced_motion_gemm():
    inputs, params = make_case(block=4)
    counts = {}
    for impl in ("reference", *BACKENDS[:1]):
        with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
            run(inputs, params, impl)
        counts[impl] = counter.get_total_flops()
    rows, dim = 2 * 2 * 8, 16
    assert counts["reference"] == 2 * dim * (rows * (3 * 64 * 2 + 2 * 64) + 2 * 2 * 12)
    if BACKENDS:
        assert counts[BACKENDS[0]] == 2 * dim * (rows * (3 * 64 * 2 + 2 * 4) + 2 * 2 * 12)


def test_bad_inputs_raise_naming_the_argument():
    inputs, params = make_case()
    iframe, motion, residual, audio = inputs
    with pytest.raises(ValueError, match="multiples of patch"):
        run([iframe[..., :12, :], motion[..., :3, :], residual[..., :12, :], audio], params, "reference")
    with pytest.raises(ValueError, match="motion"):
        run([iframe, motion[..., :3, :], residual, audio], params, "reference")
    with pytest.raises(ValueError, match="residual"):
        run([iframe, motion, residual[:, :1], audio], params, "reference")
    with pytest.raises(TypeError, match="motion"):
        run([iframe, motion.double(), residual, audio], params, "reference")
    with pytest.raises(ValueError, match="audio_feat"):
        run([iframe, motion, residual, audio[:1]], params, "reference")
    with pytest.raises(ValueError, match="params.motion_pos"):
        run(inputs, params._replace(motion_pos=params.motion_pos[:1]), "reference")
    with pytest.raises(TypeError, match="params.iframe_bias"):
        run(inputs, params._replace(iframe_bias=params.iframe_bias.double()), "reference")
    with pytest.raises(ValueError, match="audio_weight"):
        run(inputs, params._replace(audio_weight=None), "reference")
    with pytest.raises(TypeError, match="params"):
        run(inputs, tuple(params), "reference")
    with pytest.raises(TypeError, match="iframe"):
        run([iframe.to(torch.uint8), motion, residual, audio], params, "reference")
    with pytest.raises(ValueError, match="B >= 1 and T >= 1"):
        run([iframe[:0], motion[:0], residual[:0], audio[:0]], params, "reference")
    with pytest.raises(ValueError, match="impl"):
        run(inputs, params, "fastest")


def test_module_forward_and_from_clip():
    from vidsel.io import CompressedClip

    torch.manual_seed(0)
    module = CompressedPatchEmbed(dim=16, patch=8, num_frames=2, size=16, motion_block=4)
    clip = CompressedClip(
        iframes=torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8),
        motion=torch.randn(2, 2, 4, 4), block_size=4,
        residual=torch.randint(-255, 256, (2, 3, 16, 16), dtype=torch.int16),
        audio=torch.randn(2, 1600), sample_rate=16000, pict_types=["P", "P"], timestamps=[0.0, 0.5])
    tokens = module.from_clip(clip)
    assert tokens.shape == (1, 4, 2, 4, 16)
    iframe, motion, residual, audio_feat = module.clip_inputs(clip)
    assert audio_feat.shape == (1, 2, 128) and float(iframe.max()) <= 1.0 and float(residual.min()) >= -1.0
    expected, _ = reference.compressed_patch_embed(iframe, motion, residual, audio_feat, module.params(), 8)
    assert_close(tokens, expected, scale=10)
    tokens.sum().backward()
    assert all(p.grad is not None for p in module.parameters())
    with pytest.raises(ValueError, match="block size 4"):
        module(iframe, motion[..., :2, :2], residual)
    silent = CompressedPatchEmbed(dim=16, patch=8, num_frames=2, size=16, audio=False)
    assert silent.from_clip(clip).shape == (1, 3, 2, 4, 16)


def test_log_mel_peak_follows_tone_frequency():
    rate = 16000
    time = torch.arange(rate // 2) / rate
    peaks = []
    for hz in (300.0, 1000.0, 4000.0):
        feats = log_mel_features(torch.sin(2 * math.pi * hz * time).unsqueeze(0), rate)
        peaks.append(int(feats[0].argmax()))
    assert peaks == sorted(peaks) and len(set(peaks)) == 3



def test_from_clip_on_a_real_encoded_video(tmp_path):
    """Reader -> module end to end: an MPEG-4 file with audio, motion at its macroblock granularity."""
    from tests.video_factory import make_video
    from vidsel.io import read_compressed

    make_video(tmp_path / "clip.mp4", codec="mpeg4", size=(32, 48), num_frames=24, gop=12)
    clip = read_compressed(str(tmp_path / "clip.mp4"), num_segments=2)
    height, width = clip.iframes.shape[-2:]
    assert clip.motion.shape[-2] * clip.block_size == height
    module = CompressedPatchEmbed(dim=8, patch=16, num_frames=2, size=(height, width), motion_block=clip.block_size)
    tokens = module.from_clip(clip)
    assert tokens.shape == (1, 4, 2, (height // 16) * (width // 16), 8)
    expected, _ = reference.compressed_patch_embed(*module.clip_inputs(clip), module.params(), 16)
    assert_close(tokens, expected, scale=10)
