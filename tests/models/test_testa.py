"""Behaviour of the TESTA encoder and the joint ViT + ToMe baseline at small configs.

Small TESTA: 8 frames of 32² at patch 8 (L = 16 patches), D = 32, 2 heads, depth 3:
clip (B, 3, 8, 32, 32) -> tokens (B, 1 + T_out·L_out, 32).
"""

import pytest
import torch

import vidsel
from tests.helpers import assert_close, device_backends
from vidsel.models.testa import JointConfig, JointEncoder, TestaConfig, TestaEncoder

SMALL = dict(num_frames=8, img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)


def small_testa(**overrides) -> TestaEncoder:
    return TestaEncoder(TestaConfig(**{**SMALL, "r_frames": 1, "r_patches": 3, **overrides}))


def small_joint(**overrides) -> JointEncoder:
    return JointEncoder(JointConfig(**{**SMALL, "r": 20, **overrides}))


def expected_testa_counts(frames, patches, depth, r_frames, r_patches):
    """TESTA §3.2 per block: T -> T - min(R_T, ⌊(T-1)/2⌋), L -> L - min(R_S, ⌊L/2⌋)."""
    counts = []
    for _ in range(depth):
        frames = frames - min(r_frames, (frames - 1) // 2)
        patches = patches - min(r_patches, patches // 2)
        counts.append((frames, patches))
    return counts


def clip(batch=2, frames=8, size=32):
    return torch.randn(batch, 3, frames, size, size)


@pytest.mark.parametrize("partition", ["alternate", "importance"])
@pytest.mark.parametrize("prop_attn", [False, True])
@pytest.mark.parametrize("r_frames,r_patches", [(1, 3), (0, 2), (2, 0), (5, 12)])  # (5, 12) clamps both
def test_testa_token_counts_follow_formula(partition, prop_attn, r_frames, r_patches):
    model = small_testa(r_frames=r_frames, r_patches=r_patches, partition=partition, prop_attn=prop_attn).eval()
    with torch.no_grad():
        tokens, info = model(clip(), return_info=True)
    counts = expected_testa_counts(8, 16, 3, r_frames, r_patches)
    assert info["tokens_per_block"] == counts
    assert model.token_schedule() == counts
    frames, patches = counts[-1]
    assert tokens.shape == (2, 1 + frames * patches, 32)
    assert torch.isfinite(tokens).all()
    # Sizes are conserved: every output token stands for a share of the 8 x 16 input patches.
    frame_size, patch_size = info["frame_size"], info["patch_size"]
    assert frame_size.shape == (2, frames) and patch_size.shape == (2, frames, patches)
    assert_close(frame_size.sum(1), torch.full((2,), 8.0))
    assert_close((frame_size[:, :, None] * patch_size).sum((1, 2)), torch.full((2,), 8.0 * 16))


def test_noagg_keeps_every_token_and_is_timesformer():
    model = small_testa(r_frames=0, r_patches=0).eval()
    with torch.no_grad():
        tokens, info = model(clip(), return_info=True)
    assert tokens.shape == (2, 1 + 8 * 16, 32)
    assert info["tokens_per_block"] == [(8, 16)] * 3


@pytest.mark.parametrize("r", [20, 100])  # 100 clamps at ⌊(N-1)/2⌋
def test_joint_tome_token_counts(r):
    model = small_joint(r=r).eval()
    with torch.no_grad():
        tokens, info = model(clip(), return_info=True)
    n, counts = 1 + 8 * 16, []
    for _ in range(3):
        n -= min(r, (n - 1) // 2)
        counts.append(n)
    assert info["tokens_per_block"] == counts
    assert tokens.shape == (2, counts[-1], 32)
    assert_close(info["size"].sum(1), torch.full((2,), 1.0 + 8 * 16))


def test_frame_merging_averages_whole_frames():
    """A clip of 8 identical frames: TAM merges one pair of whole frames (7 remain, sizes 1 and one
    2, frame 0 protected) and every remaining frame's tokens stay identical to frame 0's."""
    torch.manual_seed(1)
    model = small_testa(r_frames=1, r_patches=0, depth=1).eval()
    with torch.no_grad():
        model.time_embed.zero_()
        frame = torch.randn(1, 3, 1, 32, 32)
        tokens, info = model(frame.expand(1, 3, 8, 32, 32).contiguous(), return_info=True)
    assert info["tokens_per_block"] == [(7, 16)]
    per_frame = tokens[0, 1:].reshape(7, 16, 32)
    for t in range(1, 7):
        assert_close(per_frame[t], per_frame[0], scale=10)
    assert sorted(info["frame_size"][0].tolist()) == [1.0] * 6 + [2.0]  # one pair of frames merged
    assert info["frame_size"][0, 0] == 1.0  # frame 0 is protected


def test_prop_attn_only_matters_after_merging():
    torch.manual_seed(0)
    x = clip()
    plain = small_testa(r_frames=0, r_patches=0).eval()
    prop = small_testa(r_frames=0, r_patches=0, prop_attn=True).eval()
    prop.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert_close(prop(x), plain(x))  # all sizes 1: log 1 = 0
        merging = small_testa().eval()
        merging_prop = small_testa(prop_attn=True).eval()
        merging_prop.load_state_dict(merging.state_dict())
        assert not torch.allclose(merging_prop(x), merging(x))


@pytest.mark.parametrize("device, impl", device_backends())
def test_backends_agree(device, impl):
    torch.manual_seed(0)
    x = clip(batch=1)
    reference = small_testa(impl="reference").eval()
    other = small_testa(impl=impl).eval()
    other.load_state_dict(reference.state_dict())
    with torch.no_grad():
        assert_close(other(x), reference(x), scale=10)


def test_eval_is_deterministic():
    model = small_testa().eval()
    x = clip()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("build", [small_testa, small_joint], ids=["testa", "tome"])
def test_one_adamw_step_lowers_loss(build):
    torch.manual_seed(0)
    model = build(depth=2).train()
    x, target = clip(batch=2), torch.randn(2, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def loss_fn():
        tokens = model(x)
        return (tokens[:, 0] - target).pow(2).mean() + tokens[:, 1:].mean(1).pow(2).mean()

    loss = loss_fn()
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), "missing or bad gradients"
    if isinstance(model, TestaEncoder):
        assert grads["blocks.0.temporal_attn.qkv.weight"].abs().sum() > 0
    optimizer.step()
    with torch.no_grad():
        assert loss_fn() < loss.detach()


def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    model = small_testa(depth=1, num_frames=4, r_frames=1, r_patches=2).eval()
    x = clip(batch=1, frames=4)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    assert_close(compiled, eager, scale=10)


def test_registry_configs():
    names = vidsel.list_models("*testa*") + vidsel.list_models("*joint*")
    for name in ("testa_f16", "testa_f16_noagg", "testa_f32", "testa_f32_noagg", "testa_f96",
                 "testa_f96_noagg", "tome_joint_f16", "joint_f16"):
        assert name in names
    model = vidsel.create_model("testa_f32", depth=1, img_size=32, embed_dim=16, num_heads=2)
    assert (model.config.num_frames, model.config.r_frames, model.config.r_patches) == (32, 1, 12)
    assert vidsel.create_model("testa_f96", depth=1, img_size=32, embed_dim=16, num_heads=2).config.r_frames == 4
    assert vidsel.create_model("tome_joint_f16", depth=1, img_size=32, embed_dim=16, num_heads=2).config.r == 197
    with pytest.raises(ValueError, match="unknown TestaConfig fields"):
        vidsel.create_model("testa_f16", frames=3)


def test_bad_clip_shape_raises():
    with pytest.raises(ValueError, match="clip must have shape"):
        small_testa()(torch.randn(1, 3, 5, 32, 32))
