"""vidsel.patch.testa on Hugging Face TimesformerModel (divided space-time)."""

import pytest
import torch

import vidsel
from tests.helpers import assert_close
from tests.patch import small_models as sm
from vidsel import flops
from vidsel.models import testa as testa_model
from vidsel.patch import testa
from vidsel.patch.testa import timesformer_state_dict

SMALL = dict(num_frames=4, img_size=64, embed_dim=64, depth=3, num_heads=4)


def run(model, clip):
    with torch.no_grad():
        return model(clip).last_hidden_state


def frame_major(tokens, frames, patches):
    """HF layout (CLS, then patch-major l·T + t) -> vidsel's (CLS, then frame-major t·L + l)."""
    batch, _, dim = tokens.shape
    grid = tokens[:, 1:].reshape(batch, patches, frames, dim).transpose(1, 2)
    return torch.cat([tokens[:, :1], grid.reshape(batch, frames * patches, dim)], dim=1)


def test_r0_equals_unpatched():
    model, clip = sm.hf_timesformer(), sm.video_batch()
    expected = run(model, clip)
    handle = testa(model, 0, 0)
    assert handle.patched == 3
    assert (run(model, clip) - expected).abs().max() <= 1e-6


@pytest.mark.parametrize("r_frames, r_patches", [(1, 3), (2, 5), ([1, 0, 1], [0, 4, 2])])
def test_token_counts_follow_formula(r_frames, r_patches):
    model, clip = sm.hf_timesformer(frames=6), sm.video_batch(frames=6)
    handle = testa(model, r_frames, r_patches)
    out = run(model, clip)
    recorded = handle.state.tokens_per_block
    assert recorded == handle.schedule
    if isinstance(r_frames, int):
        assert recorded == testa_model.testa_token_schedule(6, 16, 3, r_frames, r_patches)
    else:  # per block: T -> T - min(R_T, (T - 1) // 2), L -> L - min(R_S, L // 2)
        assert recorded == [(5, 16), (5, 12), (4, 10)]
    frames, patches = recorded[-1]
    assert (handle.state.frames, handle.state.patches) == (frames, patches)
    assert out.shape == (2, 1 + frames * patches, 64)
    assert torch.equal(handle.state.frame_size.sum(dim=1), torch.full((2,), 6.0))
    assert torch.equal(handle.state.patch_size.sum(dim=2), torch.full((2, frames), 16.0))


@pytest.mark.parametrize("partition, prop_attn", [("alternate", False), ("alternate", True), ("importance", False)])
def test_equals_vidsel_testa_with_its_weights(partition, prop_attn):
    encoder = vidsel.create_model("testa_f16", **SMALL, r_frames=1, r_patches=3, partition=partition,
                                  prop_attn=prop_attn).eval()
    model = sm.hf_timesformer()
    model.load_state_dict(timesformer_state_dict(encoder.state_dict()))
    clip = encoder.example_inputs(2)[0]  # (B, 3, T, H, W)
    with torch.no_grad():
        expected, info = encoder(clip, return_info=True)
    handle = testa(model, 1, 3, partition=partition, prop_attn=prop_attn)
    out = run(model, clip.transpose(1, 2))
    assert handle.state.tokens_per_block == info["tokens_per_block"]
    assert_close(frame_major(out, handle.state.frames, handle.state.patches), expected)
    assert_close(handle.state.patch_size, info["patch_size"])


def test_unpatched_equals_vidsel_timesformer():
    encoder = vidsel.create_model("timesformer_f8", **SMALL).eval()
    model = sm.hf_timesformer()
    model.load_state_dict(timesformer_state_dict(encoder.state_dict()))
    clip = encoder.example_inputs(2)[0]
    with torch.no_grad():
        expected = encoder(clip)
    assert_close(frame_major(run(model, clip.transpose(1, 2)), 4, 16), expected)


def test_remove_restores_bitwise():
    model, clip = sm.hf_timesformer(), sm.video_batch()
    expected = run(model, clip)
    modules, state = list(model.modules()), model.state_dict()
    handle = testa(model, 1, 4)
    assert list(model.state_dict()) == list(state)
    assert run(model, clip).shape[1] < expected.shape[1]
    handle.remove()
    assert list(model.modules()) == modules
    after = model.state_dict()
    assert all(after[k].data_ptr() == v.data_ptr() and torch.equal(after[k], v) for k, v in state.items())
    assert torch.equal(run(model, clip), expected)


def test_flops_equal_vidsel_testa():
    from transformers import TimesformerConfig, TimesformerModel

    with torch.device("meta"):
        model = TimesformerModel(TimesformerConfig(num_frames=16))  # TimeSformer-B/16 at 224²
    clip = torch.empty(1, 16, 3, 224, 224, device="meta")
    unpatched = flops.count(model, clip).gmacs
    assert unpatched == pytest.approx(flops.count_model("testa_f16_noagg").gmacs, rel=1e-12)
    testa(model, 1, 2)
    patched = flops.count(model, clip).gmacs
    assert patched == pytest.approx(flops.count_model("testa_f16").gmacs, rel=1e-12)
    assert patched == pytest.approx(229.0, abs=0.5)  # TESTA Table 6: 228


def test_classifier_and_train_eval():
    from transformers import TimesformerConfig, TimesformerForVideoClassification

    config = TimesformerConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                               image_size=64, patch_size=16, num_frames=4, num_labels=3)
    classifier = TimesformerForVideoClassification(config).eval()
    clip = sm.video_batch()
    handle = testa(classifier, 1, 4)
    assert handle.model is classifier.timesformer
    with torch.no_grad():
        eval_logits = classifier(clip).logits
    classifier.train()
    logits = classifier(clip).logits
    assert_close(logits, eval_logits)  # no dropout configured
    logits.sum().backward()
    assert all(p.grad is not None for p in classifier.parameters())


def test_torch_compile_matches_eager():
    model, clip = sm.hf_timesformer(depth=2), sm.video_batch()
    testa(model, 1, 3)
    expected = run(model, clip)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert_close(run(compiled, clip), expected)


def test_errors():
    with pytest.raises(TypeError, match=r"Conv2d.*TimesformerModel"):
        testa(torch.nn.Conv2d(3, 3, 1), 1, 1)
    with pytest.raises(TypeError, match="joint_space_time"):
        testa(sm.hf_timesformer(attention_type="joint_space_time"), 1, 1)
    model = sm.hf_timesformer()
    with pytest.raises(ValueError, match="r_frames"):
        testa(model, -1, 2)
    with pytest.raises(ValueError, match="r_patches"):
        testa(model, 1, [1, 2])
    with pytest.raises(ValueError, match="partition"):
        testa(model, 1, 1, partition="random")
    handle = testa(model, 1, 1)
    with pytest.raises(ValueError, match="already patched"):
        testa(model, 1, 1)
    with pytest.raises(ValueError, match="attentions"):
        model(sm.video_batch(), output_attentions=True)
    handle.remove()


def test_trace_source_partitions_the_input():
    model, clip = sm.hf_timesformer(frames=6), sm.video_batch(frames=6)
    handle = testa(model, 2, 5, trace_source=True)
    run(model, clip)
    state = handle.state
    source, frame_source = state.source, state.frame_source
    assert source.shape == (2, state.frames, state.patches, 6 * 16)
    assert torch.equal(source.sum(dim=(1, 2)), torch.ones(2, 6 * 16, dtype=torch.long))  # each patch once
    assert_close(source.sum(dim=-1).to(state.patch_size.dtype), state.token_size())  # sizes are size-weighted means
    assert torch.equal(frame_source.sum(dim=-1).to(state.frame_size.dtype), state.frame_size)
    assert frame_source[:, 0, 0].all()  # frame 0 is protected: it stays the first output frame
