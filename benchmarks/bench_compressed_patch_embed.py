"""Compressed-domain patch embedding (MM-ViT §3.2 eq. 1–4), CPU float32.

What: B=2, T=8, 224², D=768, P=16, audio features 128-d, motion at H.264 block granularity g=4 (and g=16,
MPEG-4 macroblocks, forward only). Contenders:
  reference path — what a PyTorch user writes: nearest-upsample motion to H×W, three Conv2d patch
      embeddings, PE adds, audio projected and repeated N times, stack (vidsel/reference, autograd).
  vidsel cpu, expand_audio=True  — fused op, same (B, 4, T, N, D) output.
  vidsel cpu, expand_audio=False — visual (B, 3, T, N, D) + audio (B, T, D): no N audio copies.
Forward+backward: gradients of all parameters (inputs are data). Memory: peak allocated during the
forward, and during forward+backward.
Why: MM-ViT embeds four modalities per frame; on block-granular motion the fused op should skip the
dense flow field and the N audio copies the plain PyTorch path materialises.
"""

from __future__ import annotations

import torch

from benchmarks.harness import (
    Table, cold_calls_ms, cold_table, expose, gemm_paths_note, interleaved_median_ms,
    peak_memory_mb,
)
from vidsel.nn import CompressedPatchEmbed
from vidsel.ops import compressed_patch_embed
from vidsel.reference import compressed_patch_embed as reference

BATCH, FRAMES, SIZE, DIM, PATCH, AUDIO_DIM = 2, 8, 224, 768, 16, 128


# Untimed rounds before timing: in this VM, the first few calls that touch the tens of MiB of fresh
# output / temporary memory run up to 4x slower (host-side page faults), whichever contender it is; a
# training loop lives in the steady state after them.
WARMUP_ROUNDS = 8


def _inputs(block: int):
    torch.manual_seed(0)
    return (torch.randn(BATCH, FRAMES, 3, SIZE, SIZE), torch.randn(BATCH, FRAMES, 2, SIZE // block, SIZE // block),
            torch.randn(BATCH, FRAMES, 3, SIZE, SIZE), torch.randn(BATCH, FRAMES, AUDIO_DIM))


def _contenders(params):
    def reference_path(*inputs):
        return reference.compressed_patch_embed(*inputs, params, PATCH, True)[0]

    def fused(expand_audio):
        return lambda *inputs: compressed_patch_embed(*inputs, params, patch=PATCH, expand_audio=expand_audio,
                                                      impl="cpu")

    return {"reference path (upsample + 3×Conv2d + repeat + stack)": reference_path,
            "vidsel cpu, expand_audio=True": fused(True), "vidsel cpu, expand_audio=False": fused(False)}


def _forward_backward(embed, inputs, leaves):
    """One training step with a dense upstream gradient (as from the next layer; a .sum() loss would hand
    both paths a stride-0 gradient no real model produces). The gradients are drawn once."""
    upstream = {}

    def run():
        for leaf in leaves:
            leaf.grad = None
        outputs = embed(*inputs)
        outputs = [t for t in (outputs if isinstance(outputs, tuple) else (outputs,)) if t is not None]
        for i, t in enumerate(outputs):
            if (i, tuple(t.shape)) not in upstream:
                upstream[(i, tuple(t.shape))] = torch.randn(t.shape)
        grads = [upstream[(i, tuple(t.shape))] for i, t in enumerate(outputs)]
        torch.autograd.backward(outputs, grads)

    return run


def cold_contenders() -> dict:
    """Forward calls at g=4 of every contender, as a user's first calls (built untimed in a fresh process)."""
    module = CompressedPatchEmbed(dim=DIM, patch=PATCH, num_frames=FRAMES, size=SIZE)
    inputs = _inputs(4)
    contenders = _contenders(module.params())

    def call(embed):
        def forward():
            with torch.no_grad():
                return embed(*inputs)

        return forward

    return {name: call(embed) for name, embed in contenders.items()}


def run(profile: str) -> list[Table]:
    module = CompressedPatchEmbed(dim=DIM, patch=PATCH, num_frames=FRAMES, size=SIZE)
    params, leaves = module.params(), list(module.parameters())
    contenders = _contenders(params)
    fwd_rounds, fb_rounds = (31, 11) if profile == "full" else (15, 7)
    table = Table(
        name="compressed_patch_embed",
        title=f"compressed patch embedding (MM-ViT eq. 1–4), B={BATCH}, T={FRAMES}, {SIZE}², D={DIM}, P={PATCH}, "
        f"float32, {torch.get_num_threads()} threads",
        columns=["motion g", "contender", "fwd ms", "fwd+bwd ms", "fwd speed-up", "fwd+bwd speed-up",
                 "fwd peak MiB", "fwd+bwd peak MiB"],
    )
    measured = {}
    for block in (4, 16):
        inputs = _inputs(block)
        with_backward = block == 4
        forwards = {name: (lambda embed=embed: embed(*inputs)) for name, embed in contenders.items()}
        train_steps = {name: _forward_backward(embed, inputs, leaves) for name, embed in contenders.items()}
        expose(f"compressed_patch_embed g={block} fwd", forwards, context=torch.no_grad)
        if with_backward:
            expose(f"compressed_patch_embed g={block} fwd+bwd", train_steps)
        with torch.no_grad():
            fwd_ms = interleaved_median_ms(forwards, fwd_rounds, WARMUP_ROUNDS)
            fwd_mb = {name: peak_memory_mb(forward) for name, forward in forwards.items()}
        fb_ms = interleaved_median_ms(train_steps, fb_rounds, WARMUP_ROUNDS) if with_backward else {}
        fb_mb = {name: peak_memory_mb(step) for name, step in train_steps.items()} if with_backward else {}
        rows = {name: (fwd_ms[name], fb_ms.get(name), fwd_mb[name], fb_mb.get(name)) for name in contenders}
        ref = rows[next(iter(rows))]
        for name, (fwd_ms, fb_ms, fwd_mb, fb_mb) in rows.items():
            table.rows.append([block, name, fwd_ms, fb_ms if fb_ms else "-", ref[0] / fwd_ms,
                               ref[1] / fb_ms if fb_ms else "-", fwd_mb, fb_mb if fb_mb else "-"])
        measured[block] = rows
    rows = measured[4]
    ref = rows[next(iter(rows))]
    for variant in ("expand_audio=True", "expand_audio=False"):
        fwd_ms, fb_ms, fwd_mb, fb_mb = rows[f"vidsel cpu, {variant}"]
        table.check(f"forward speed-up vs reference path, g=4, {variant}", ref[0] / fwd_ms, ">= 1.8x",
                    ref[0] / fwd_ms >= 1.8)
        table.check(f"forward+backward speed-up, g=4, {variant}", ref[1] / fb_ms, ">= 1.5x", ref[1] / fb_ms >= 1.5)
        table.check(f"forward peak memory / reference's, g=4, {variant}", fwd_mb / ref[2], "<= 0.5",
                    fwd_mb / ref[2] <= 0.5)
    table.notes.append(
        "Peak memory counts everything torch allocates during the call, outputs included: with expand_audio=True "
        "the (B, 4, T, N, D) output alone is 36.75 MiB (46% of the reference's peak). Inputs are data (no input "
        "gradients); fwd+bwd computes every parameter gradient from a dense upstream gradient. The I-frame and "
        "residual projections (3136×768×768 each) run as oneDNN strided Conv2d in the reference; the fused op "
        "(float32) gathers 96-patch blocks and accumulates them with the GEMM chosen per machine straight into the "
        "output rows (pre-filled with bias + PE), so it saves the dense motion projection (K 512 -> 32), the "
        "upsampled flow, convolution outputs, input / weight copies, transposes, PE passes and the stack. "
        "Contenders are timed round-robin (medians) after 8 untimed round-robin warm-up rounds: in this VM the "
        "first calls touching fresh memory run up to 4x slower, for every contender (cold calls: next table).")
    table.notes.append(gemm_paths_note(
        ("patch_projection", "patch_gradient"),
        "Conv2d and its backward through oneDNN, the audio addmm through the BLAS",
    ))
    names = list(contenders)
    cold = cold_calls_ms(__name__, "cold_contenders", names)
    steady = {name: measured[4][name][0] for name in names}
    cold_tab = cold_table("compressed_patch_embed_cold", f"compressed patch embedding forward, g=4, cold calls "
                          f"({torch.get_num_threads()} threads)", cold, steady, names[0])
    for variant in ("expand_audio=True", "expand_audio=False"):
        ratio = cold[f"vidsel cpu, {variant}"]["first"] / cold[names[0]]["first"]
        cold_tab.check(f"first call / reference's first call, {variant}", ratio, "<= 1", ratio <= 1.0)
    return [table, cold_tab]
