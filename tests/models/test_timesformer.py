"""The one TimeSformer (vidsel.models.timesformer) and the models built on it: the TESTA encoder,
the joint space-time baseline and the STTS TimeSformer variant.

Small TimeSformer: 4 frames of 32² at patch 8 (L = 16), D = 32, 2 heads, depth 2:
clip (B, 3, 4, 32, 32) -> tokens (B, 1 + 4·16, 32) or logits (B, num_classes).
"""

import pytest
import torch

import vidsel
from vidsel.models.testa import JointConfig, JointEncoder, TestaConfig, TestaEncoder
from vidsel.models.timesformer import TimeSformer

SMALL = dict(num_frames=4, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
STTS_SMALL = dict(SMALL, num_classes=5)  # TimeSformerSTTSConfig has no in_chans / mlp_ratio fields


def clip(batch=2):
    return torch.randn(batch, 3, 4, 32, 32)


def test_head_is_optional():
    x = clip()
    encoder = TimeSformer(**SMALL).eval()
    classifier = TimeSformer(**SMALL, num_classes=5).eval()
    with torch.no_grad():
        tokens = encoder(x)
        logits = classifier(x)
        assert tokens.shape == (2, 1 + 4 * 16, 32) and encoder.head is None
        assert logits.shape == (2, 5)
        torch.testing.assert_close(logits, classifier.head(classifier.forward_features(x)[:, 0]), rtol=0, atol=0)
    assert not any(key.startswith("head.") for key in encoder.state_dict())
    with pytest.raises(ValueError, match="no head"):
        encoder.forward_head(tokens)


def test_testa_encoder_is_the_timesformer_plus_merging():
    # same seed -> the same weights (same init stream); no merging -> the same tokens, exactly
    torch.manual_seed(3)
    plain = TimeSformer(**SMALL).eval()
    torch.manual_seed(3)
    testa = TestaEncoder(TestaConfig(**SMALL)).eval()
    assert list(testa.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(testa.state_dict().values(), plain.state_dict().values()))
    x = clip()
    with torch.no_grad():
        assert torch.equal(testa(x), plain(x))
    merging = TestaEncoder(TestaConfig(**SMALL, r_frames=1, r_patches=2)).eval()
    merging.load_state_dict(plain.state_dict())  # strict: one key layout
    with torch.no_grad():
        assert merging(x).shape == (2, 1 + 2 * 12, 32)  # per block T: 4 -> 3 -> 2, L: 16 -> 14 -> 12


def test_joint_encoder_is_the_joint_timesformer_plus_tome():
    torch.manual_seed(4)
    plain = TimeSformer(**SMALL, attention="joint").eval()
    torch.manual_seed(4)
    joint = JointEncoder(JointConfig(**SMALL)).eval()
    assert all(torch.equal(a, b) for a, b in zip(joint.state_dict().values(), plain.state_dict().values()))
    x = clip()
    with torch.no_grad():
        assert torch.equal(joint(x), plain(x))


def test_stts_timesformer_without_selections_is_the_timesformer_with_head():
    torch.manual_seed(5)
    plain = TimeSformer(**STTS_SMALL, weight_init="torch").eval()
    torch.manual_seed(5)
    stts = vidsel.create_model("timesformer_8x224", **STTS_SMALL).eval()
    assert all(torch.equal(a, b) for a, b in zip(stts.backbone.parameters(), plain.parameters()))
    x = clip()
    with torch.no_grad():
        assert torch.equal(stts(x), plain(x))


def test_stts_timesformer_keeps_its_checkpoint_names():
    # checkpoints of the STTS variant name the patch-embedding Conv2d `patch_embed` and the temporal
    # LayerNorm `temporal_norm`; the model saves and loads those names and nothing else
    model = vidsel.create_model("timesformer_8x224-T0.5@0", **STTS_SMALL).eval()
    keys = list(model.state_dict())
    assert "backbone.patch_embed.weight" in keys and "backbone.blocks.1.temporal_norm.bias" in keys
    assert not [k for k in keys if "patch_embed.proj" in k or "temporal_norm1" in k]
    assert len(keys) == len(dict(model.named_parameters())) + len(dict(model.named_buffers()))
    other = vidsel.create_model("timesformer_8x224-T0.5@0", **STTS_SMALL).eval()
    other.load_state_dict(model.state_dict())  # strict
    x = clip()
    with torch.no_grad():
        assert torch.equal(other(x), model(x))
    canonical = {name: p for name, p in model.backbone.named_parameters()}
    TimeSformer(**STTS_SMALL).load_state_dict(canonical)  # strict: the backbone is the one TimeSformer


def test_weight_init_schemes():
    vit = TimeSformer(**SMALL, weight_init="vit")
    torch_default = TimeSformer(**SMALL, weight_init="torch")
    assert not vit.blocks[0].attn.qkv.bias.any() and vit.blocks[0].attn.qkv.weight.std() < 0.03
    assert torch_default.blocks[0].attn.qkv.bias.any()  # PyTorch's default: uniform biases
    for model in (vit, torch_default):
        assert 0.015 < model.pos_embed.std() < 0.025 and 0.015 < model.time_embed.std() < 0.025  # std 0.02


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="attention must be one of"):
        TimeSformer(**SMALL, attention="space_only")
    with pytest.raises(ValueError, match="weight_init must be one of"):
        TimeSformer(**SMALL, weight_init="jax")
    with pytest.raises(ValueError, match="num_classes must be a positive int or None"):
        TimeSformer(**SMALL, num_classes=0)
    with pytest.raises(ValueError, match="img_size 30 must be a multiple of patch_size 8"):
        TimeSformer(**{**SMALL, "img_size": 30})
    with pytest.raises(ValueError, match=r"clip must have shape \(B, 3, 4, 32, 32\)"):
        TimeSformer(**SMALL)(torch.randn(1, 3, 5, 32, 32))
