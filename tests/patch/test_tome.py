"""vidsel.patch.tome on timm VisionTransformer, Hugging Face ViTModel and VideoMAEModel."""

import pytest
import torch

import vidsel
from tests.helpers import assert_close
from tests.patch import small_models as sm
from vidsel import flops
from vidsel.patch import tome, tome_token_schedule

# library -> (builder, input maker, protected prefix tokens, tokens entering block 0)
LIBRARIES = {
    "timm": (sm.timm_vit, sm.image_batch, 1, 17),
    "hf_vit": (sm.hf_vit, sm.image_batch, 1, 17),
    "videomae": (sm.hf_videomae, sm.video_batch, 0, 32),
}


def tokens_out(model, x):
    """Output tokens (B, N, D): timm's forward_features (its forward pools), HF's last_hidden_state."""
    return model.forward_features(x) if hasattr(model, "forward_features") else sm.last_hidden(model(x))


def run(model, x):
    with torch.no_grad():
        return tokens_out(model, x)


@pytest.mark.parametrize("library", LIBRARIES)
def test_r0_equals_unpatched(library):
    build, make_input, _, _ = LIBRARIES[library]
    model, x = build(), make_input()
    expected = run(model, x)
    handle = tome(model, 0)
    assert handle.patched == 3
    assert (run(model, x) - expected).abs().max() <= 1e-6


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("r", [5, [8, 0, 3]])
def test_token_counts_follow_formula(library, r):
    build, make_input, protected, tokens = LIBRARIES[library]
    model, x = build(), make_input()
    handle = tome(model, r)
    out = run(model, x)
    expected = tome_token_schedule(tokens, r, 3, protected)
    assert handle.state.tokens_per_block == expected == handle.schedule
    assert out.shape[1] == expected[-1] < tokens
    # N -> N - min(r, (N - protected) // 2), by hand for r = 5 on 17 tokens with a class token
    if r == 5 and protected == 1:
        assert expected == [12, 7, 4]


@pytest.mark.parametrize("library", LIBRARIES)
def test_remove_restores_bitwise(library):
    build, make_input, _, _ = LIBRARIES[library]
    model, x = build(), make_input()
    expected = run(model, x)
    modules = list(model.modules())
    state = model.state_dict()
    handle = tome(model, 4, trace_source=True)
    assert list(model.state_dict()) == list(state)  # same keys while patched
    assert run(model, x).shape[1] < expected.shape[1]
    handle.remove()
    assert list(model.modules()) == modules  # the very same objects
    after = model.state_dict()
    assert all(after[k].data_ptr() == v.data_ptr() and torch.equal(after[k], v) for k, v in state.items())
    assert torch.equal(run(model, x), expected)
    handle.remove()  # twice is a no-op
    assert not handle.active


def _copy_joint_into_timm(encoder, vit):
    """vidsel JointEncoder (1 frame) weights -> timm ViT; the time embedding folds into pos_embed."""
    src = encoder.state_dict()
    pos = src["pos_embed"].clone()
    pos[:, 1:] += src["time_embed"][:, 0]
    mapped = {"cls_token": src["cls_token"], "pos_embed": pos, "norm.weight": src["norm.weight"],
              "norm.bias": src["norm.bias"]}
    names = {"mlp.0": "mlp.fc1", "mlp.2": "mlp.fc2"}
    for key, value in src.items():
        if key.startswith(("blocks.", "patch_embed.")):
            for old, new in names.items():
                key = key.replace(old, new)
            mapped[key] = value
    vit.load_state_dict(mapped)


def test_timm_equals_vidsel_tome_encoder():
    encoder = vidsel.create_model("tome_joint_f16", num_frames=1, img_size=64, embed_dim=64, depth=3, num_heads=4,
                                  r=4, prop_attn=True).eval()
    vit = sm.timm_vit()
    _copy_joint_into_timm(encoder, vit)
    clip = encoder.example_inputs(2)[0]
    with torch.no_grad():
        expected, info = encoder(clip, return_info=True)
    handle = tome(vit, 4, prop_attn=True)
    with torch.no_grad():
        out = vit.forward_features(clip[:, :, 0])
    assert handle.state.tokens_per_block == info["tokens_per_block"]
    assert_close(out, expected)
    assert_close(handle.state.size, info["size"])


def test_flops_equal_vidsel_tome_encoder():
    from timm.models.vision_transformer import VisionTransformer

    with torch.device("meta"):
        vit = VisionTransformer(num_classes=0)  # ViT-B/16 at 224²
    tome(vit, 16)
    patched = flops.count(vit, torch.empty(1, 3, 224, 224, device="meta")).gmacs
    expected = flops.count_model("tome_joint_f16", num_frames=1, r=16).gmacs
    assert patched == pytest.approx(expected, rel=1e-12)
    assert patched < 0.75 * flops.count_model("joint_f16", num_frames=1).gmacs


@pytest.mark.parametrize("library", ["timm", "videomae"])
def test_trace_source_partitions_the_input(library):
    build, make_input, protected, tokens = LIBRARIES[library]
    model, x = build(), make_input()
    handle = tome(model, 6, trace_source=True)
    out = run(model, x)
    source = handle.state.source
    assert source.shape == (x.shape[0], out.shape[1], tokens) and source.dtype == torch.bool
    assert torch.equal(source.sum(dim=1), torch.ones(x.shape[0], tokens, dtype=torch.long))  # each input once
    assert torch.equal(source.sum(dim=-1).to(handle.state.size.dtype), handle.state.size)
    if protected:
        assert source[:, 0, 0].all() and (source[:, 0].sum(dim=-1) == 1).all()  # CLS stays alone


@pytest.mark.parametrize("library", ["timm", "hf_vit"])
def test_torch_compile_matches_eager(library):
    build, make_input, _, _ = LIBRARIES[library]
    model, x = build(depth=2), make_input()
    tome(model, 3)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert_close(sm.last_hidden(compiled(x)), sm.last_hidden(model(x)))


@pytest.mark.parametrize("library", LIBRARIES)
def test_train_and_eval(library):
    build, make_input, _, _ = LIBRARIES[library]
    model, x = build(), make_input()
    tome(model, 4)
    eval_out = run(model, x)
    model.train()  # no dropout configured: training changes nothing but autograd
    out = tokens_out(model, x)
    assert_close(out, eval_out)
    out.square().mean().backward()
    trained = [name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert any("qkv" in name or "key" in name or "k_proj" in name for name in trained)
    assert len(trained) >= len(list(model.parameters())) - 3  # all but e.g. a pooler / mask token


def test_model_containing_a_backbone_is_patched():
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                       image_size=64, patch_size=16, num_labels=3)
    classifier = ViTForImageClassification(config).eval()
    handle = tome(classifier, 4)
    assert handle.model is classifier.vit and handle.patched == 2
    with torch.no_grad():
        assert classifier(sm.image_batch()).logits.shape == (2, 3)
    assert handle.state.tokens_per_block == [13, 9]


def test_errors():
    with pytest.raises(TypeError, match=r"Linear.*timm VisionTransformer.*ViTModel.*VideoMAEModel"):
        tome(torch.nn.Linear(4, 4), 2)
    model = sm.timm_vit()
    for bad in (-1, 1.5, True, [1, 2]):
        with pytest.raises(ValueError, match="r must be"):
            tome(model, bad)
    handle = tome(model, 2)
    with pytest.raises(ValueError, match="already patched"):
        tome(model, 2)
    handle.remove()
    tome(model, 2).remove()  # patchable again after remove()
    from timm.models.vision_transformer import ResPostBlock

    with pytest.raises(TypeError, match="ResPostBlock"):
        tome(sm.timm_vit(block_fn=ResPostBlock), 2)
