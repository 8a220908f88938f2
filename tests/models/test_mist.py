"""MIST (vidsel.models.mist): shapes of every registered variant, eval determinism, one AdamW step
through the straight-through selectors, torch.compile parity, a real video through the encoder
protocol, FLOP counts against an analytic count, argument errors."""

import pytest
import torch

import vidsel
from tests.helpers import assert_close
from tests.video_factory import make_video
from vidsel import flops
from vidsel.io import read_frames
from vidsel.models.mist import CONFIGS, FrameEncoder, MISTConfig, TinyViTEncoder, encode_inputs

NAMES = list(CONFIGS)
SMALL = dict(num_segments=4, frames_per_segment=2, num_patches=9, dim=32, num_heads=4, topk=2, topj=3)


def small(name="mist_clip", **overrides):
    return vidsel.create_model(name, **{**SMALL, **overrides})


def test_every_paper_variant_is_registered():
    assert set(NAMES) == {"mist_clip", "mist_meanpool", "mist_trans_frame", "mist_trans_patch", "mist_divided_sta",
                          "mist_wo_ss", "mist_wo_rs", "mist_wo_sta"}
    assert set(vidsel.list_models("mist_*")) == set(NAMES)
    c = vidsel.create_model("mist_clip").config
    assert (c.num_segments, c.frames_per_segment, c.num_patches, c.dim) == (8, 4, 50, 512)
    assert (c.topk, c.topj, c.num_layers, c.num_heads, c.selector) == (2, 12, 2, 8, "gumbel")
    assert vidsel.create_model("mist_clip", num_segments=32).config.num_frames == 128


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("training", [False, True])
def test_shapes_of_every_variant(name, training):
    model = small(name).train(training)
    patches, words, answers = model.example_inputs(2)
    assert patches.shape == (2, 4, 2, 9, 32) and words.shape == (2, 20, 32) and answers.shape == (2, 5, 32)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[:, 7:] = False
    logits, info = model(patches, words, answers, word_mask=mask, return_info=True)
    assert logits.shape == (2, 5) and bool(torch.isfinite(logits).all())
    assert torch.equal(model(patches, words, answers, word_mask=mask), logits) or training
    c = model.config
    if c.variant != "ista":
        assert info == {}
        return
    k = c.topk if c.segment_selection else c.num_segments
    j = c.topj if c.region_selection else c.num_patches
    assert info["segments"].shape == (2, c.num_layers, k)
    assert info["regions"].shape == (2, c.num_layers, k * c.frames_per_segment, j)
    assert bool((info["segments"] < c.num_segments).all() and (info["regions"] < c.num_patches).all())


@pytest.mark.parametrize("selector", ["gumbel_no_replacement", "attention"])
def test_appendix_a_selectors_in_the_model(selector):
    model = small(selector=selector, region_selector=selector, num_layers=1)
    inputs = model.example_inputs(3)
    for training in (True, False):
        logits, info = model.train(training)(*inputs, return_info=True)
        assert logits.shape == (3, 5) and info["segments"].shape == (3, 1, 2)
        assert bool((info["segments"][:, 0, 0] != info["segments"][:, 0, 1]).all())  # distinct segments
    if selector == "attention":
        names = [n for n, _ in model.named_parameters()]
        assert not any("selector" in n for n in names)


def test_full_size_mist_clip_shapes():
    model = vidsel.create_model("mist_clip").eval()
    with torch.no_grad():
        logits, info = model(*model.example_inputs(2), return_info=True)
    assert logits.shape == (2, 5)
    assert info["segments"].shape == (2, 2, 2) and info["regions"].shape == (2, 2, 8, 12)


def test_padded_words_do_not_change_the_answer():
    model = small().eval()
    patches, words, answers = model.example_inputs(2)
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[:, :6] = True
    noisy = words.clone()
    noisy[:, 6:] = torch.randn_like(noisy[:, 6:]) * 10
    with torch.no_grad():
        assert_close(model(patches, noisy, answers, word_mask=mask), model(patches, words, answers, word_mask=mask))


def test_eval_is_deterministic():
    model = vidsel.create_model("mist_clip").eval()
    inputs = model.example_inputs(2)
    with torch.no_grad():
        first, first_info = model(*inputs, return_info=True)
        torch.manual_seed(1234)
        second, second_info = model(*inputs, return_info=True)
    assert torch.equal(first, second)
    assert torch.equal(first_info["segments"], second_info["segments"])
    assert torch.equal(first_info["regions"], second_info["regions"])
    # the eval selection is the hard top-k of the layer's scores (highest first)
    layer = model.head.layers[0]
    assert bool((first_info["segments"][:, 0, 0] != first_info["segments"][:, 0, 1]).all())
    assert layer.segment_selector.training is False


def test_one_adamw_step_lowers_the_loss_with_gradients_through_the_selectors():
    torch.manual_seed(0)
    model = vidsel.create_model("mist_clip").train()
    patches, words, answers = model.example_inputs(4)
    target = torch.tensor([0, 3, 1, 4])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def loss_at(seed):
        torch.manual_seed(seed)  # same Gumbel draws before and after the step
        return model.loss(model(patches, words, answers), target)

    loss = loss_at(5)
    loss.backward()
    grads = dict(model.named_parameters())
    for layer in ("head.layers.0", "head.layers.1"):
        for name in ("segment_selector.g_q", "segment_selector.g_s", "region_selector.h_q", "region_selector.h_x"):
            grad = grads[f"{layer}.{name}.weight"].grad
            assert grad is not None and bool(grad.abs().sum() > 0), f"{layer}.{name}"
    optimizer.step()
    with torch.no_grad():
        assert loss_at(5) < loss.detach()


def test_torch_compile_fullgraph_matches_eager_in_eval():
    model = vidsel.create_model("mist_clip").eval()
    inputs = model.example_inputs(2)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        logits, info = compiled(*inputs, return_info=True)
        eager, eager_info = model(*inputs, return_info=True)
    assert_close(logits, eager, scale=10)
    assert torch.equal(info["segments"], eager_info["segments"]) and torch.equal(info["regions"], eager_info["regions"])


def test_real_video_through_the_encoder_protocol(tmp_path):
    video = make_video(tmp_path / "qa.mp4", size=(32, 32), num_frames=24, audio=None)
    frames = read_frames(video.path, 8, size=32)[None]  # (1, K·T = 8, 3, 32, 32) uint8
    encoder = TinyViTEncoder(img_size=32, patch_size=8, dim=64, depth=1, num_heads=4, vocab_size=50).eval()
    assert isinstance(encoder, FrameEncoder)
    question = torch.tensor([[1, 7, 9, 3]])
    candidates = torch.randint(0, 50, (1, 3, 2))
    patches, words, answers = encode_inputs(encoder, frames, question, candidates, num_segments=4)
    assert patches.shape == (1, 4, 2, 17, 64) and words.shape == (1, 4, 64) and answers.shape == (1, 3, 64)
    model = vidsel.create_model("mist_clip", num_segments=4, frames_per_segment=2, num_patches=17, dim=64,
                                num_heads=4, topj=4).eval()
    with torch.no_grad():
        logits, info = model(patches, words, answers, return_info=True)
    assert logits.shape == (1, 3) and bool(torch.isfinite(logits).all())
    assert info["regions"].shape == (1, 2, 4, 4)
    other_video = make_video(tmp_path / "b.mp4", size=(32, 32), num_frames=24, audio=None, seed=3)
    other = read_frames(other_video.path, 8, size=32)
    with torch.no_grad():
        assert not torch.equal(model(*encode_inputs(encoder, other[None], question, candidates, 4)), logits)


def _block_macs(tokens, d, mlp_ratio=4.0):
    """Pre-norm layer: qkv + proj + MLP, q·kᵀ and attn·v, two LayerNorms (5 per element)."""
    return tokens * d * d * (4 + 2 * mlp_ratio) + 2 * tokens * tokens * d + 2 * 5 * tokens * d


def _analytic_gmacs(c: MISTConfig, words=20, answers=5):
    """Independent multiply-add count of one eval forward (batch 1)."""
    d, k_seg, t, n = c.dim, c.num_segments, c.frames_per_segment, c.num_patches
    head = d * d + answers * d * d + answers * d  # vq_proj, answer_proj, eq. 7
    if c.variant == "trans_patch" or c.variant == "trans_frame":
        video = k_seg * t * (n if c.variant == "trans_patch" else 1)
        return (head + (video + words) * d * d + c.num_layers * _block_macs(video + words, d) + 5 * d) / 1e9
    assert c.variant == "ista"
    regions = c.topk * t * c.topj
    per_layer = (
        d * d + k_seg * d * d + k_seg * d  # g_q, g_s, QKᵀ (eq. 2-3)
        + d * d + c.topk * t * n * (d * d + d)  # h_q, h_x, QKᵀ per frame (eq. 4-5)
        + (k_seg + regions + words) * d * d  # φ_s, φ_x, φ_w (eq. 6)
        + _block_macs(k_seg + regions + words, d)
    )
    return (head + c.num_layers * per_layer) / 1e9


@pytest.mark.parametrize("name", ["mist_clip", "mist_trans_patch", "mist_trans_frame"])
@pytest.mark.parametrize("num_segments", [8, 32])
def test_flops_match_the_analytic_count(name, num_segments):
    report = flops.count_model(name, num_segments=num_segments)
    expected = _analytic_gmacs(MISTConfig(**{**CONFIGS[name][0], "num_segments": num_segments}))
    assert report.gmacs == pytest.approx(expected, rel=1e-9)
    if name == "mist_clip":
        assert "vidsel.topk_gather" in report.by_op  # the selection ops' formulas are counted
        with torch.device("meta"):
            model = vidsel.create_model(name, num_segments=num_segments)
        trained = flops.count(model, *model.example_inputs(1), train=True)
        assert trained.by_op["vidsel.gumbel_topk"] > 0 and "aten.bmm" in trained.by_op


def test_mist_cost_grows_far_slower_than_trans_patch():
    ratios = []
    for num_segments in (8, 16, 32, 64):  # 32 ... 256 frames at T = 4
        mist = flops.count_model("mist_clip", num_segments=num_segments).gmacs
        patch = flops.count_model("mist_trans_patch", num_segments=num_segments).gmacs
        ratios.append(patch / mist)
    assert ratios == sorted(ratios) and ratios[0] > 10 and ratios[2] > 50


def test_bad_inputs_and_configs_raise():
    model = small().eval()
    patches, words, answers = model.example_inputs(2)
    with pytest.raises(ValueError, match=r"patches must have shape \(B, K, T, N, D\) = \(B, 4, 2, 9, 32\)"):
        model(patches[:, :3], words, answers)
    with pytest.raises(ValueError, match="words must have shape"):
        model(patches, words[:1], answers)
    with pytest.raises(ValueError, match="answers must have shape"):
        model(patches, words, answers[..., :5])
    with pytest.raises(TypeError, match="word_mask must be a bool tensor"):
        model(patches, words, answers, word_mask=torch.ones(2, 20))
    with pytest.raises(ValueError, match="word_mask must have shape"):
        model(patches, words, answers, word_mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="patches must be a floating-point"):
        model(patches.long(), words, answers)
    with pytest.raises(ValueError, match="unknown MISTConfig fields"):
        vidsel.create_model("mist_clip", frames=3)
    with pytest.raises(ValueError, match="variant must be one of"):
        MISTConfig(variant="lstm")
    with pytest.raises(ValueError, match="selector must be one of"):
        MISTConfig(selector="argmax")
    with pytest.raises(ValueError, match="topk=9 must be <= num_segments=8"):
        MISTConfig(topk=9)
    with pytest.raises(ValueError, match="dim=100 must be divisible by num_heads=8"):
        MISTConfig(dim=100)


# ------------------------------------------------------------------------------------------------
# Learning check: synthetic long-form QA where exactly one segment carries the answer
# ------------------------------------------------------------------------------------------------

QA = dict(num_segments=4, frames_per_segment=2, num_patches=5, dim=32, num_heads=4, topk=1, topj=1, num_layers=2)
KEYS, VOCAB, CHOICES, WORDS = 6, 96, 4, 3


def _qa_task(generator):
    """Fixed random vectors: question keys (one marks each segment), answer vocabulary, a 'salient' direction."""
    d = QA["dim"]
    return torch.randn(KEYS, d, generator=generator), torch.randn(VOCAB, d, generator=generator), torch.randn(
        d, generator=generator)


def _qa_batch(task, batch, generator):
    """Every segment looks alike: its frames' CLS tokens carry a key (distinct per segment), one patch per
    frame carries an answer (distinct per segment) on a shared salient direction, the rest is noise. The
    question's [CLS] word carries the key of one segment; the answer is that segment's answer, among
    CHOICES candidates. Returns patches, words, candidates, answer index, the answering segment."""
    keys, vocab, salient = task
    k, t, n, d = QA["num_segments"], QA["frames_per_segment"], QA["num_patches"], QA["dim"]
    rows = torch.arange(batch)
    marker = torch.stack([torch.randperm(KEYS, generator=generator)[:k] for _ in range(batch)])
    answer = torch.stack([torch.randperm(VOCAB, generator=generator)[:k] for _ in range(batch)])
    segment = torch.randint(0, k, (batch,), generator=generator)
    patches = 0.5 * torch.randn(batch, k, t, n, d, generator=generator)
    patches[:, :, :, 0] += keys[marker][:, :, None]
    where = torch.randint(1, n, (batch, k, t), generator=generator)
    patches += torch.nn.functional.one_hot(where, n)[..., None] * (salient + vocab[answer])[:, :, None, None]
    words = 0.5 * torch.randn(batch, WORDS, d, generator=generator)
    words[:, 0] += keys[marker[rows, segment]]
    true = answer[rows, segment]
    wrong = torch.stack([torch.randperm(VOCAB - 1, generator=generator)[: CHOICES - 1] for _ in range(batch)])
    wrong += (wrong >= true[:, None]).long()
    order = torch.stack([torch.randperm(CHOICES, generator=generator) for _ in range(batch)])
    choices = torch.cat([true[:, None], wrong], dim=1).gather(1, order)
    candidates = vocab[choices] + 0.1 * torch.randn(batch, CHOICES, d, generator=generator)
    return patches, words, candidates, (order == 0).long().argmax(dim=1), segment


def _train_and_evaluate(name, steps=150, batch=128):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    task = _qa_task(generator)
    model = vidsel.create_model(name, **QA)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        patches, words, candidates, target, _ = _qa_batch(task, batch, generator)
        loss = model.loss(model(patches, words, candidates), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    held_out = _qa_batch(task, 1000, torch.Generator().manual_seed(99))
    model.eval()
    with torch.no_grad():
        logits, info = model(*held_out[:3], return_info=True)
    accuracy = (logits.argmax(dim=1) == held_out[3]).float().mean().item()
    picked = (info["segments"][:, 0, 0] == held_out[4]).float().mean().item()  # top-scoring segment, layer 1
    return accuracy, picked


def test_learns_synthetic_long_form_qa_and_segment_selection_matters():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: extra threads only wait for each other on a shared machine
    try:
        accuracy, picked = _train_and_evaluate("mist_clip")
        accuracy_wo_ss, _ = _train_and_evaluate("mist_wo_ss")
    finally:
        torch.set_num_threads(threads)
    assert accuracy >= 0.9, f"held-out accuracy {accuracy:.3f}"
    assert picked >= 0.9, f"right segment picked {picked:.3f} (random: {1 / QA['num_segments']:.2f})"
    assert accuracy_wo_ss <= accuracy - 0.15, f"w/o SS {accuracy_wo_ss:.3f} vs MIST {accuracy:.3f}"
