"""MM-ViT I–IV (vidsel.models.mmvit): every variant × attention order × modality subset, the layers
against explicit formulas, GFLOPs / parameters against Table 1, and learning on real encoded videos."""

import itertools
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vidsel
import vidsel.io as vio
from tests.helpers import assert_close
from tests.video_factory import make_video, tone
from vidsel import flops
from vidsel.models.mmvit import CONFIGS, MODALITIES, ORDERS, MMViTConfig
from vidsel.nn.mmvit_attention import CrossModalAttention, SpatialAttention, TemporalAttention, shift_merge

NAMES = list(CONFIGS)
TINY = dict(num_frames=4, img_size=32, patch_size=8, embed_dim=24, num_heads=2, depth=1, num_classes=5,
            motion_block=8)
SUBSETS = ["".join(c) for r in range(1, 5) for c in itertools.combinations(MODALITIES, r)]
NAME_ORDERS = [(name, order) for name in NAMES for order in ORDERS[CONFIGS[name][0]["variant"]]]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread beats two contended ones


def tiny(name, **overrides):
    return vidsel.create_model(name, **{**TINY, **overrides})


# ------------------------------------------------------------------------------------------------
# Every variant × order × modality subset
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,order", NAME_ORDERS)
def test_every_order_and_modality_subset_runs(name, order):
    for modalities in SUBSETS:
        if name.endswith("coatt") and len(modalities) == 1:
            with pytest.raises(ValueError, match="at least 2 modalities"):
                tiny(name, order=order, modalities=modalities)
            continue
        model = tiny(name, order=order, modalities=modalities).eval()
        inputs = model.example_inputs(2)
        with torch.no_grad():
            logits = model(*inputs)
            tokens = model.tokens(*inputs)
        assert logits.shape == (2, 5) and torch.isfinite(logits).all()
        assert tokens.shape == (2, len(modalities), 4, 16, 24)


@pytest.mark.parametrize("name", NAMES)
def test_output_depends_on_exactly_the_selected_modalities(name):
    model = tiny(name, modalities="MRA" if name.endswith("coatt") else "MA").eval()
    inputs = list(model.example_inputs(2))
    with torch.no_grad():
        base = model(*inputs)
        for index, letter in enumerate(MODALITIES):
            changed = list(inputs)
            changed[index] = changed[index] + 1.0
            moved = (model(*changed) - base).abs().max().item()
            if letter in model.config.modalities:
                assert moved > 1e-4, f"output ignores selected modality {letter}"
            else:
                assert moved == 0.0, f"output depends on unselected modality {letter}"


def test_unselected_inputs_may_be_none():
    model = tiny("mmvit_iii_merged", modalities="M").eval()
    iframe, motion, residual, audio = model.example_inputs(2)
    with torch.no_grad():
        assert_close(model(None, motion), model(iframe, motion, residual, audio))


@pytest.mark.parametrize("name", NAMES)
def test_eval_is_deterministic(name):
    model = tiny(name).eval()
    inputs = model.example_inputs(2)
    with torch.no_grad():
        first, second = model(*inputs), model(*inputs)
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", NAMES)
def test_one_adamw_step_lowers_the_loss(name):
    model = tiny(name, depth=2)
    inputs = model.example_inputs(4)
    labels = torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = F.cross_entropy(model(*inputs), labels)
    before.backward()
    # CLS reads the tokens through spatial attention only (TimeSformer), so what follows it in the last
    # block cannot reach the loss; everything of the first block does.
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.startswith(("embed.", "blocks.1.")))
    optimizer.step()
    with torch.no_grad():
        after = F.cross_entropy(model(*inputs), labels)
    assert after < before


def test_attention_order_changes_the_block():
    """One block per order with the same weights (large enough that the stages do not nearly commute)."""
    outputs = {}
    cls, x = torch.randn(1, 1, 24), torch.randn(1, 4, 4, 16, 24)
    for order in ORDERS["iii"]:
        torch.manual_seed(0)
        block = tiny("mmvit_iii_merged", order=order).blocks[0].eval()
        assert block.order == list(order)
        with torch.no_grad():
            for param in block.parameters():
                param.normal_(0, 0.3)
            outputs[order] = torch.cat([t.flatten() for t in block(cls, x)])
    for a, b in itertools.combinations(outputs, 2):
        assert (outputs[a] - outputs[b]).abs().max() > 1e-2, (a, b)
    torch.manual_seed(0)
    assert tiny("mmvit_iv", order="STM").blocks[0].order == ["S", "T", "C", "M"]


# ------------------------------------------------------------------------------------------------
# Layers against explicit formulas (loops, dense masks: test-only references)
# ------------------------------------------------------------------------------------------------


def test_shift_merge_is_eq_17_to_20():
    v = torch.randn(3, 4, 8)  # (positions, S = 4 modalities, D = 8: portions of 2)
    r = shift_merge(v)
    for i in range(4):
        expected = torch.cat([v[:, j, 2 * i:2 * i + 2] for j in range(4)], dim=-1) + v[:, i]
        assert torch.equal(r[:, i], expected)


def _explicit_attention(layer, tokens, mask=None):
    q, k, v = layer.heads(tokens)
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return layer.merge_heads(logits.softmax(-1) @ v)


@pytest.mark.parametrize("kind", ["merged", "coatt"])
def test_cross_modal_attention_matches_dense_masked_attention(kind):
    layer = CrossModalAttention(16, 2, kind).eval()
    x, cls = torch.randn(2, 4, 3, 5, 16), torch.randn(2, 1, 16)
    with torch.no_grad():
        cls_out, out = layer(cls, x)
        groups = layer.norm(x).permute(0, 2, 3, 1, 4).reshape(-1, 4, 16)  # (b t n) s d
        mask = None if kind == "merged" else ~torch.eye(4, dtype=torch.bool)
        expected = _explicit_attention(layer.attn, groups, mask).reshape(2, 3, 5, 4, 16).permute(0, 3, 1, 2, 4)
    assert torch.equal(cls_out, cls)
    assert_close(out, x + layer.fc(expected))


def test_window_attention_matches_per_window_attention():
    layer = SpatialAttention(16, 2, grid=(4, 4), window=(2, 2)).eval()
    temporal = TemporalAttention(16, 2, window=2).eval()
    x, cls = torch.randn(1, 2, 4, 16, 16), torch.randn(1, 1, 16)
    with torch.no_grad():
        cls_out, out = layer(cls, x)
        grid = layer.norm(x).reshape(1, 2, 4, 4, 4, 16)
        copies = []
        for s, t, wy, wx in itertools.product(range(2), range(4), range(2), range(2)):
            window = grid[0, s, t, 2 * wy:2 * wy + 2, 2 * wx:2 * wx + 2].reshape(1, 4, 16)
            tokens = torch.cat([layer.norm(cls), window], dim=1)
            result = _explicit_attention(layer.attn, tokens)
            copies.append(result[0, 0])
            rows, cols = slice(2 * wy, 2 * wy + 2), slice(2 * wx, 2 * wx + 2)
            expected = x[0, s, t].reshape(4, 4, 16)[rows, cols] + result[0, 1:].reshape(2, 2, 16)
            assert_close(out[0, s, t].reshape(4, 4, 16)[rows, cols], expected)
        assert_close(cls_out[0, 0], cls[0, 0] + torch.stack(copies).mean(0))
        _, out = temporal(cls, x)
        for w in range(2):
            frames = temporal.norm(x)[0, :, 2 * w:2 * w + 2].permute(0, 2, 1, 3).reshape(-1, 2, 16)  # (s n) f d
            expected = temporal.fc(_explicit_attention(temporal.attn, frames)).reshape(2, 16, 2, 16).permute(0, 2, 1, 3)
            assert_close(out[0, :, 2 * w:2 * w + 2], x[0, :, 2 * w:2 * w + 2] + expected)


# ------------------------------------------------------------------------------------------------
# Configuration errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides,match", [
    (dict(order="TMS"), "attention order of MM-ViT II"),
    (dict(order="TTS"), "attention order"),
    (dict(modalities="IX"), "subset of 'IMRA'"),
    (dict(modalities=""), "subset of 'IMRA'"),
    (dict(variant="v"), "variant must be one of"),
    (dict(bogus=1), "unknown MMViTConfig fields"),
])
def test_bad_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        vidsel.create_model("mmvit_ii", **overrides)


def test_bad_inputs_raise():
    model = tiny("mmvit_iii_shift", modalities="IA")
    iframe, motion, residual, audio = model.example_inputs(1)
    with pytest.raises(ValueError, match="uses iframe but iframe is None"):
        model(None, motion, residual, audio)
    with pytest.raises(ValueError, match="iframe must have shape"):
        model(iframe[:, :2], motion, residual, audio)
    with pytest.raises(ValueError, match="pass audio_feat"):
        model(iframe, motion, residual)
    with pytest.raises(ValueError, match="shift-merge splits D"):
        tiny("mmvit_iii_shift", modalities="IMR", embed_dim=32)
    with pytest.raises(ValueError, match="IV windows must tile"):
        tiny("mmvit_iv", window_frames=3)
    with pytest.raises(TypeError, match="CompressedClip"):
        model.forward_clips([iframe])


def test_modalities_are_canonicalised():
    assert MMViTConfig(modalities="am").modalities == "MA"
    assert MMViTConfig(variant="ii").order == "TS" and MMViTConfig(variant="i").order == ""


# ------------------------------------------------------------------------------------------------
# Fidelity: GFLOPs (fvcore convention) and parameters against Table 1
# ------------------------------------------------------------------------------------------------

D, L, T, N, S, P, CLASSES = 768, 12, 8, 196, 4, 16, 101


def analytic_gmacs(variant: str, kind: str = "merged") -> float:
    """Independent count of one forward in fvcore's convention (what the model computes by its reading):
    linear / conv multiply-adds, attention q·kᵀ + attn·v = 2·L²·D per sequence, 5 per LayerNorm element."""
    n = S * T * N
    macs = T * N * D * (3 + 2 + 3) * P * P + T * 128 * D  # eq. 1–4, E_M dense (d × 2P², as on the meta device)

    def ln(tokens):
        return 5 * tokens * D

    def attention(groups, length, linear_per_token=4, cls_copies=False):
        tokens = groups * (length + cls_copies)
        return linear_per_token * D * D * tokens + groups * 2 * (length + cls_copies) ** 2 * D

    for _ in range(L):
        if variant == "i":
            macs += ln(n + 1) + attention(1, n + 1)
        else:
            frames, side = (T // 2, 7) if variant == "iv" else (T, 14)
            across = variant == "ii"
            macs += ln(n) + (attention(N, S * T, 5) if across else attention(n // frames, frames, 5))
            spatial_groups = T if across else S * T * (14 // side) ** 2
            macs += ln(n) + ln(1) + attention(spatial_groups, n // spatial_groups, cls_copies=True)
            if variant in ("iii", "iv"):
                if kind == "shift":
                    macs += ln(n) + 3 * D * D * n
                else:
                    keys = S if kind == "merged" else S - 1
                    macs += ln(n) + 5 * D * D * n + T * N * S * 2 * keys * D
            if variant == "iv":
                macs += side * side * D * n  # depthwise conv
        macs += ln(n + 1) + 8 * D * D * (n + 1)
    return (macs + ln(1) + D * CLASSES) / 1e9


TABLE_1 = {  # name: (paper params M, paper TFLOPs, variant, kind)
    "mmvit_i": (87.23, 1.26, "i", ""),
    "mmvit_ii": (122.69, 0.85, "ii", ""),
    "mmvit_iii_merged": (158.14, 0.82, "iii", "merged"),
    "mmvit_iii_coatt": (158.14, 0.82, "iii", "coatt"),
    "mmvit_iii_shift": (143.98, 0.78, "iii", "shift"),
    "mmvit_iv": (158.60, 0.72, "iv", "merged"),
}


@pytest.fixture(scope="module")
def reports():
    return {name: flops.count_model(name) for name in TABLE_1}


@pytest.mark.parametrize("name", list(TABLE_1))
def test_counted_gflops_equal_the_analytic_count(reports, name):
    _, _, variant, kind = TABLE_1[name]
    assert reports[name].gmacs == pytest.approx(analytic_gmacs(variant, kind), rel=1e-9)


def test_mmvit_i_is_1_26_tflops(reports):
    assert reports["mmvit_i"].gmacs == pytest.approx(1260, rel=0.01)


def test_mmvit_ii_is_0_85_tflops(reports):
    assert reports["mmvit_ii"].gmacs == pytest.approx(850, rel=0.01)


def test_parameter_differences_between_variants_match_table_1(reports):
    """The readings of the blocks reproduce the paper's parameter differences (rounding: ±0.01 M)."""
    params = {name: reports[name].params / 1e6 for name in TABLE_1}
    for name, base in (("mmvit_ii", "mmvit_i"), ("mmvit_iii_merged", "mmvit_ii"), ("mmvit_iii_coatt", "mmvit_ii"),
                       ("mmvit_iii_shift", "mmvit_ii"), ("mmvit_iv", "mmvit_iii_merged")):
        paper = TABLE_1[name][0] - TABLE_1[base][0]
        assert params[name] - params[base] == pytest.approx(paper, abs=0.011), (name, base)


# ------------------------------------------------------------------------------------------------
# Real encoded videos: forward_clips and learning the direction of motion
# ------------------------------------------------------------------------------------------------

DIRECTIONS = [(1, 0), (-1, 0), (0, 1), (0, -1)]
LEARN = dict(num_frames=4, img_size=64, patch_size=16, embed_dim=32, num_heads=2, depth=2, num_classes=4,
             motion_block=16)


def direction_clips(root, count: int, seed: int):
    """`count` MPEG-4 clips (64×64, 16 frames, GOP 8) of a random texture moving 1–3 px per frame in one of
    4 directions (label = index in DIRECTIONS), with or without a tone, read with read_compressed (T = 4)."""
    rng = np.random.default_rng(seed)
    clips, labels = [], []
    for i in range(count):
        label, speed = i % 4, int(rng.integers(1, 4))
        audio = tone(220.0 * (1 + i % 3)) if (i // 4) % 2 else None
        video = make_video(os.path.join(root, f"dir{seed}_{i}.mp4"), codec="mpeg4", size=(64, 64), num_frames=16,
                           fps=8, gop=8, motion=(DIRECTIONS[label][0] * speed, DIRECTIONS[label][1] * speed),
                           audio=audio, seed=seed * 1000 + i)
        clips.append(vio.read_compressed(video.path, 4))
        labels.append(label)
    return clips, torch.tensor(labels)


@pytest.fixture(scope="module")
def direction_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("directions"))
    return direction_clips(root, 64, seed=1), direction_clips(root, 64, seed=2)


def test_forward_clips_reads_every_modality(direction_data):
    (clips, _), _ = direction_data
    clips = [clips[4], clips[3]]  # one with a tone, one without
    assert clips[0].audio is not None and clips[1].audio is None
    model = vidsel.create_model("mmvit_iii_merged", **LEARN).eval()
    with pytest.raises(ValueError, match="has none"):
        model.forward_clips(clips)
    features = torch.randn(2, 4, 128)
    iframe, motion, residual, _ = model.clip_inputs(clips, features)
    assert iframe.max() <= 1 and residual.abs().max() <= 1 and motion.abs().max() > 0.5
    with torch.no_grad():
        assert_close(model.forward_clips(clips, features), model(iframe, motion, residual, features))
        waveform = clips[0].audio[None]
        expected = model(*model.clip_inputs(clips[:1])[:3], audio_waveform=waveform, sample_rate=clips[0].sample_rate)
        assert_close(model.forward_clips(clips[:1]), expected)


def _train_and_evaluate(modalities: str, train, test, epochs: int = 20) -> float:
    torch.manual_seed(0)
    model = vidsel.create_model("mmvit_iii_merged", modalities=modalities, **LEARN)
    (train_clips, train_labels), (test_clips, test_labels) = train, test
    train_inputs, test_inputs = model.clip_inputs(train_clips)[:3], model.clip_inputs(test_clips)[:3]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(train_labels)).split(16):
            loss = F.cross_entropy(model(*(x[batch] for x in train_inputs)), train_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        return (model(*test_inputs).argmax(1) == test_labels).float().mean().item()


def test_motion_vectors_carry_the_direction_and_iframes_do_not(direction_data):
    """Same budget (20 epochs over 64 clips), held-out accuracy on 64 other clips (chance: 25%)."""
    train, test = direction_data
    assert _train_and_evaluate("M", train, test) >= 0.95
    assert _train_and_evaluate("I", train, test) <= 0.40


def test_forward_clips_takes_h264_motion_at_its_block_size(tmp_path):
    video = make_video(tmp_path / "h264.mp4", codec="libx264", size=(64, 64), num_frames=16, fps=8, motion=(2, 0))
    clip = vio.read_compressed(video.path, 4)
    assert clip.block_size == 4 and clip.motion.shape == (4, 2, 16, 16)
    model = vidsel.create_model("mmvit_iv", **LEARN).eval()
    with torch.no_grad():
        logits = model.forward_clips([clip, clip])
    assert logits.shape == (2, 4) and torch.isfinite(logits).all()
    assert_close(logits[0], logits[1])
