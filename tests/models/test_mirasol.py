"""Mirasol3B model: shapes, exact causality over chunks, streaming == encode, training step, gradients,
the 3B config on the meta device, torch.compile, greedy generation, and a learning check."""

import math
import time

import pytest
import torch

import vidsel
from tests.helpers import assert_close
from vidsel import flops
from vidsel.models.mirasol import Mirasol, MirasolOutput

SMALL = dict(num_frames=32, num_chunks=4, img_size=16)  # 4 chunks x 8 frames of 16x16: fast on CPU
SPF = 640  # audio samples per frame: 16 kHz / 25 fps
KINDS = ["mirasol_tiny", "mirasol_tiny_ttm"]


def build(name: str, **overrides) -> Mirasol:
    return vidsel.create_model(name, **{**SMALL, **overrides})


@pytest.mark.parametrize("name", KINDS)
def test_forward_shapes_and_losses(name):
    model = build(name)
    video, audio, text = model.example_inputs(2)
    assert video.shape == (2, 32, 3, 16, 16) and audio.shape == (2, 32 * SPF) and text.shape == (2, 16)
    out = model(video, audio, text)
    assert isinstance(out, MirasolOutput)
    assert out.x.shape == out.h.shape == (2, 4, 8, 64)
    assert out.logits.shape == (2, 16, 259)
    for loss in (out.loss, out.latent_loss, out.text_loss):
        assert loss.shape == () and torch.isfinite(loss)
    assert_close(out.loss, out.latent_loss + out.text_loss)
    assert 0.0 <= out.latent_loss.item() <= 2.0  # 1 - cosine
    silent = model(video, None, None)  # audio is optional, text too
    assert silent.text_loss is None and silent.logits is None and silent.x.shape == (2, 4, 8, 64)


def test_loss_weights_and_reconstruction_head():
    model = build("mirasol_tiny", reconstruction=True, text_weight=10.0, latent_weight=0.5, recon_weight=2.0)
    out = model(*model.example_inputs(2))
    assert out.recon_loss is not None and 0.0 <= out.recon_loss.item() <= 2.0
    assert_close(out.loss, 0.5 * out.latent_loss + 10.0 * out.text_loss + 2.0 * out.recon_loss)
    out.loss.backward()
    assert model.recon_head.weight.grad.abs().sum() > 0


def test_frames_per_chunk_change_without_new_parameters():
    """512 frames = 16 chunks x 32 without more parameters (§3.6): positions are sinusoidal."""
    base = vidsel.create_model("mirasol_tiny")
    longer = vidsel.create_model("mirasol_tiny", num_frames=512)
    assert sum(p.numel() for p in base.parameters()) == sum(p.numel() for p in longer.parameters())
    longer.load_state_dict(base.state_dict())


@pytest.mark.parametrize("name", KINDS)
def test_causal_over_chunks_exactly(name):
    """Perturbing chunk t+1 (video and audio) leaves x_<=t and ĥ_<=t bit-identical (eq. 2, eq. 8)."""
    model = build(name).eval()
    video, audio, _ = model.example_inputs(2)
    frames = 8
    with torch.no_grad():
        x, h = model.encode(video, audio)
        for t in range(3):
            v, a = video.clone(), audio.clone()
            v[:, (t + 1) * frames:(t + 2) * frames] = torch.rand_like(v[:, :frames])
            a[:, (t + 1) * frames * SPF:(t + 2) * frames * SPF] = torch.randn_like(a[:, :frames * SPF])
            x2, h2 = model.encode(v, a)
            assert torch.equal(x2[:, : t + 1], x[:, : t + 1]) and torch.equal(h2[:, : t + 1], h[:, : t + 1]), t
            assert not torch.equal(x2[:, t + 1], x[:, t + 1]) and not torch.equal(h2[:, t + 1], h[:, t + 1])


@pytest.mark.parametrize("name", KINDS)
@pytest.mark.parametrize("with_audio", [True, False])
def test_streaming_step_equals_encode(name, with_audio):
    model = build(name).eval()
    video, audio, _ = model.example_inputs(2)
    audio = audio if with_audio else None
    with torch.no_grad():
        _, h = model.encode(video, audio)
        state, steps = model.init_state(2), []
        for t in range(4):
            chunk_audio = None if audio is None else audio[:, t * 8 * SPF:(t + 1) * 8 * SPF]
            h_t, state = model.step(video[:, t * 8:(t + 1) * 8], chunk_audio, state)
            steps.append(h_t)
    assert state.t == 4 and len(state.h) == 4
    torch.testing.assert_close(torch.stack(steps, 1), h, atol=1e-5, rtol=1e-5)


def test_generate_is_greedy_on_the_forward_logits():
    model = build("mirasol_tiny").eval()
    video, audio, text = model.example_inputs(2)
    prompt = text[:, :3]
    tokens = model.generate(video, audio, prompt, max_new_tokens=5)
    assert tokens.shape == (2, 8) and torch.equal(tokens[:, :3], prompt)
    with torch.no_grad():
        logits = model(video, audio, tokens).logits
    assert torch.equal(logits[:, 2:-1].argmax(-1), tokens[:, 3:])
    # streaming: generate from the ĥ of the chunks seen so far
    state = model.init_state(2)
    for t in range(4):
        _, state = model.step(video[:, t * 8:(t + 1) * 8], audio[:, t * 8 * SPF:(t + 1) * 8 * SPF], state)
    assert torch.equal(model.generate(None, None, prompt, 5, state=state), tokens)


@pytest.mark.parametrize("name", KINDS)
def test_one_adamw_step_lowers_the_loss(name):
    model = build(name)
    inputs = model.example_inputs(2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def loss():
        torch.manual_seed(1)  # the same random output masking both times
        return model(*inputs).loss

    before = loss()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        assert loss().item() < before.item()


@pytest.mark.parametrize("name", KINDS)
def test_gradients_reach_every_stage(name):
    model = build(name)
    model(*model.example_inputs(2)).loss.backward()
    for part in ("video_embed", "audio_embed", "vit", "combiner", "latent", "text"):
        grads = [p.grad for p in getattr(model, part).parameters()]
        assert all(g is not None for g in grads), part
        assert sum(g.abs().sum() for g in grads) > 0, part


def test_output_masking_ratio():
    model = build("mirasol_tiny").train()
    x = torch.randn(4, 16, 8, 64)
    x_in, key_bias = model.mask_outputs(x)
    hidden = (x_in != x).any(-1)
    assert abs(hidden.float().mean().item() - 0.75) < 0.05
    assert torch.equal(key_bias < 0, hidden.flatten(1))
    model.eval()
    assert model.mask_outputs(x)[0] is x and model.mask_outputs(x)[1] is None


@pytest.mark.parametrize("name", ["mirasol3b", "mirasol3b_ttm"])
def test_mirasol3b_on_the_meta_device(name):
    """~3B parameters (2.8-3.2B), a little over half in the audio-video part (§3.6), FLOP-countable."""
    with torch.device("meta"):
        model = vidsel.create_model(name)
    total = sum(p.numel() for p in model.parameters())
    text = sum(p.numel() for p in model.text.parameters())
    assert 2.8e9 <= total <= 3.2e9
    assert 0.5 < (total - text) / total < 0.6
    assert model.config.num_frames == 128 and model.config.num_chunks == 16 and model.config.num_outputs == 32
    report = flops.count(model, *model.example_inputs())
    assert report.gmacs > 1000 and report.by_module["combiner"] > 0 and report.params == total


@pytest.mark.parametrize("name", ["mirasol_tiny", "mirasol_tiny_ttm", "mirasol_small", "mirasol_small_ttm"])
def test_every_config_counts_on_the_meta_device(name):
    """The registry protocol: example_inputs on the model's device, FLOPs counted without memory."""
    report = flops.count_model(name)
    assert report.gmacs > 0 and report.by_module["vit"] > report.by_module["latent"] > 0


def test_small_config_and_last_selection_run():
    model = vidsel.create_model("mirasol_small", num_frames=16, num_chunks=2, combiner_selection="last")
    out = model(*model.example_inputs(1))
    assert out.x.shape == (1, 2, 16, 256) and out.logits.shape == (1, 16, 259) and torch.isfinite(out.loss)


def test_torch_compile_encode_matches_eager():
    model = build("mirasol_tiny", num_frames=16, num_chunks=2).eval()
    video, audio, _ = model.example_inputs(1)
    with torch.no_grad():
        eager = model.encode(video, audio)
        compiled = torch.compile(model.encode)(video, audio)
    for a, b in zip(compiled, eager):
        assert_close(a, b)


def test_bad_inputs():
    model = build("mirasol_tiny")
    video, audio, text = model.example_inputs(1)
    with pytest.raises(ValueError, match="num_chunks=4"):
        model(video[:, :30], None)
    with pytest.raises(ValueError, match="audio must be a float waveform of shape"):
        model(video, audio[:, :-1])
    with pytest.raises(TypeError, match="text must be an int64"):
        model(video, audio, text.float())
    with pytest.raises(ValueError, match=r"vocab_size=259"):
        model(video, audio, text + 300)
    with pytest.raises(ValueError, match=r"\(B, F, 3, H, W\)"):
        model(video[:, :, :2], audio)
    with pytest.raises(ValueError, match="audio=False"):
        build("mirasol_tiny", audio=False)(video, audio)
    with pytest.raises(ValueError, match="combiner"):
        build("mirasol_tiny", combiner="perceiver")
    with pytest.raises(ValueError, match="unknown MirasolConfig fields"):
        vidsel.create_model("mirasol_tiny", depth=3)
    with pytest.raises(ValueError, match="tube"):
        build("mirasol_tiny", num_frames=16, num_chunks=4)(video[:, :16])
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(video, audio, text[:, :1], -1)
    with pytest.raises(ValueError, match="state"):
        model.generate(None, None, text[:, :1], 2)


# ------------------------------------------------------------------------------------------------
# Learning check: the audio tone of chunk t announces the colour of chunk t+1.
# ------------------------------------------------------------------------------------------------

COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.9], [0.9, 0.9, 0.1]])
TONES_HZ = (300.0, 700.0, 1500.0, 3100.0)
CHUNKS, FRAMES, SIZE = 4, 8, 16
# Held-out latent loss, shuffled-audio model minus real-audio model: required (measured 0.073 / 0.018).
LATENT_MARGIN = {"mirasol_tiny": 0.03, "mirasol_tiny_ttm": 0.008}


def tone_colour_clips(count: int, generator: torch.Generator):
    """Clips of 4 single-colour chunks (+ pixel noise) with a pure tone (random phase, + noise) per
    chunk; the tone of chunk t picks the colour of chunk t+1, the first colour is random."""
    tones = torch.randint(0, 4, (count, CHUNKS), generator=generator)
    colours = torch.cat([torch.randint(0, 4, (count, 1), generator=generator), tones[:, :-1]], dim=1)
    video = COLOURS[colours][:, :, None, :, None, None].expand(count, CHUNKS, FRAMES, 3, SIZE, SIZE)
    video = (video + 0.05 * torch.randn(video.shape, generator=generator)).clamp(0, 1)
    seconds = torch.arange(FRAMES * SPF) / 16000.0
    phase = 2 * math.pi * torch.rand(count, CHUNKS, 1, generator=generator)
    audio = 0.5 * torch.sin(2 * math.pi * torch.tensor(TONES_HZ)[tones][..., None] * seconds + phase)
    audio = audio + 0.01 * torch.randn(audio.shape, generator=generator)
    return video.reshape(count, CHUNKS * FRAMES, 3, SIZE, SIZE), audio.reshape(count, -1)


def train_latent_model(name: str, shuffle_audio: bool, steps: int = 200, batch: int = 16) -> float:
    """Trains the latent causal model (the audio-video encoder, ViT + Combiner, stays at its shared seed-0
    initialisation, so both runs predict the same kind of targets and the latent loss cannot be lowered
    by collapsing them); returns the held-out latent loss (eval, 64 clips)."""
    torch.manual_seed(0)
    model = vidsel.create_model(name, num_frames=CHUNKS * FRAMES, num_chunks=CHUNKS, img_size=SIZE)
    for part in (model.video_embed, model.audio_embed, model.vit, model.vit_norm, model.combiner):
        part.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.0)
    data = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        video, audio = tone_colour_clips(batch, data)
        if shuffle_audio:
            audio = audio[torch.randperm(batch, generator=data)]
        optimizer.zero_grad()
        model(video, audio).latent_loss.backward()
        optimizer.step()
    held_out = torch.Generator().manual_seed(99)
    video, audio = tone_colour_clips(64, held_out)
    if shuffle_audio:
        audio = audio[torch.randperm(64, generator=held_out)]
    with torch.no_grad():
        return model.eval()(video, audio).latent_loss.item()


@pytest.mark.parametrize("name", KINDS)
def test_learning_check_audio_predicts_next_chunk(name):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.process_time()
    try:
        real, shuffled = train_latent_model(name, False), train_latent_model(name, True)
    finally:
        torch.set_num_threads(threads)
    cpu_seconds = time.process_time() - start
    print(f"held-out latent loss: real audio {real:.4f}, shuffled audio {shuffled:.4f}, {cpu_seconds:.0f} s CPU")
    assert shuffled - real >= LATENT_MARGIN[name], (real, shuffled)
