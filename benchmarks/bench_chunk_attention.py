"""Block-causal chunk attention (Mirasol3B eq. 8), CPU float32.

What: B=1, H=8, L=4096, Dh=64, 16 chunks of 256. Forward and forward+backward of the vidsel cpu backend vs
(a) SDPA with the dense boolean eq. 8 mask (what peers write), (b) FlexAttention with a block mask,
compiled (forward only: it has no CPU backward), (c) SDPA is_causal=True (the floor: same tile skipping,
slightly smaller visible area), (d) unmasked SDPA, and a plain loop of unmasked SDPA calls, one per
query chunk over its key prefix. Contenders are timed round-robin (medians). Also: streaming step
latency per chunk (one chunk of queries against the cached prefix) and the extra memory of the forward.
Why: Mirasol3B's Combiner and latent autoregressive model attend block-causally over long sequences;
a fused kernel that skips the masked tiles should cost about what causal attention costs (the floor),
well below the dense-mask attention peers write.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import vidsel.ops as ops
from benchmarks.harness import (
    Table, cold_calls_ms, cold_table, expose, gemm_paths_note, interleaved_median_ms, median_ms, peak_memory_mb,
    result_mb,
)
from vidsel.reference.chunk_attention import block_causal_mask

BATCH, HEADS, LENGTH, HEAD_DIM, CHUNK = 1, 8, 4096, 64, 256


def per_chunk_sdpa_loop(q, k, v, chunk):
    """Peers' streaming-style formulation: unmasked SDPA of each query chunk over its key prefix."""
    outs = []
    for start in range(0, q.shape[2], chunk):
        end = min(start + chunk, q.shape[2])
        outs.append(F.scaled_dot_product_attention(q[:, :, start:end], k[:, :, :end], v[:, :, :end]))
    return torch.cat(outs, dim=2)


def _flex_forward(q, k, v, chunk):
    """FlexAttention with a block mask of eq. 8, compiled; None when it cannot run here."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    chunk_id = torch.arange(q.shape[2]) // chunk

    def block_causal(b, h, q_idx, kv_idx):
        return chunk_id[q_idx] >= chunk_id[kv_idx]

    try:
        block_mask = create_block_mask(block_causal, None, None, q.shape[2], k.shape[2], device="cpu")
        compiled = torch.compile(flex_attention)
        compiled(q, k, v, block_mask=block_mask)
    except Exception as error:  # noqa: BLE001  (an unsupported torch/CPU combination: report, do not fail)
        print(f"bench_chunk_attention: FlexAttention unavailable: {error}")
        return None
    return lambda: compiled(q, k, v, block_mask=block_mask)


def _forward_backward(attention, leaves, grad_out):
    def run():
        for leaf in leaves:
            leaf.grad = None
        attention(*leaves).backward(grad_out)

    return run


def _streaming_step_ms(q, k, v, chunk, impl: str | None) -> float:
    """Mean latency of one streaming step: a chunk of queries against the whole cached prefix."""
    total = 0.0
    n_chunks = q.shape[2] // chunk
    for t in range(n_chunks):
        end = (t + 1) * chunk
        q_t, k_t, v_t = q[:, :, end - chunk : end], k[:, :, :end], v[:, :, :end]
        if impl is None:
            step = lambda: F.scaled_dot_product_attention(q_t, k_t, v_t)  # noqa: E731
        else:
            step = lambda: ops.chunk_causal_attention(q_t, k_t, v_t, chunk_size=chunk, impl=impl)  # noqa: E731
        total += median_ms(step, min_run_time=0.1)
    return total / n_chunks


def _attentions(mask):
    return {
        "vidsel cpu": lambda q, k, v: ops.chunk_causal_attention(q, k, v, chunk_size=CHUNK, impl="cpu"),
        "(a) SDPA, dense bool mask": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        "(c) SDPA is_causal (floor)": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "(d) SDPA unmasked": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
        "per-chunk SDPA loop": lambda q, k, v: per_chunk_sdpa_loop(q, k, v, CHUNK),
    }


COLD = ("vidsel cpu", "(a) SDPA, dense bool mask", "(c) SDPA is_causal (floor)")


def cold_contenders() -> dict:
    """Forward calls of the cold-call contenders (built untimed in a fresh process)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(BATCH, HEADS, LENGTH, HEAD_DIM) for _ in range(3))
    attentions = _attentions(block_causal_mask([CHUNK] * (LENGTH // CHUNK), LENGTH))
    return {name: (lambda a=attentions[name]: a(q, k, v)) for name in COLD}


def run(profile: str) -> list[Table]:
    torch.manual_seed(0)
    q, k, v = (torch.randn(BATCH, HEADS, LENGTH, HEAD_DIM) for _ in range(3))
    grad_out = torch.randn(BATCH, HEADS, LENGTH, HEAD_DIM)
    mask = block_causal_mask([CHUNK] * (LENGTH // CHUNK), LENGTH)
    attentions = _attentions(mask)
    forward = {name: (lambda a=a: a(q, k, v)) for name, a in attentions.items()}
    flex = _flex_forward(q, k, v, CHUNK)
    if flex is not None:
        forward["(b) FlexAttention block mask, compiled"] = flex
    rounds = 15 if profile == "full" else 7
    fwd_ms = interleaved_median_ms(expose("chunk_attention fwd", forward), rounds)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    fwd_bwd = {name: _forward_backward(a, leaves, grad_out) for name, a in attentions.items()}
    fwd_bwd_ms = interleaved_median_ms(expose("chunk_attention fwd+bwd", fwd_bwd), rounds - 2)
    extra_mb = {}
    for name in ("vidsel cpu", "(a) SDPA, dense bool mask", "(c) SDPA is_causal (floor)"):
        extra_mb[name] = max(peak_memory_mb(forward[name]) - result_mb(forward[name]()), 0.0)

    table = Table(
        name="chunk_attention",
        title=f"block-causal chunk attention, B={BATCH}, H={HEADS}, L={LENGTH}, Dh={HEAD_DIM}, "
        f"{LENGTH // CHUNK} chunks of {CHUNK}, float32, {torch.get_num_threads()} threads",
        columns=["contender", "fwd ms", "fwd+bwd ms", "fwd vs (a)", "fwd+bwd vs (a)", "fwd extra MiB"],
    )
    dense_fwd, dense_fb = fwd_ms["(a) SDPA, dense bool mask"], fwd_bwd_ms["(a) SDPA, dense bool mask"]
    for name, ms in fwd_ms.items():
        fb = fwd_bwd_ms.get(name)
        table.rows.append([
            name, ms, fb if fb is not None else "n/a (no CPU backward)", dense_fwd / ms,
            dense_fb / fb if fb is not None else "n/a", extra_mb.get(name, ""),
        ])
    step_ours = _streaming_step_ms(q, k, v, CHUNK, "cpu")
    step_sdpa = _streaming_step_ms(q, k, v, CHUNK, None)
    table.rows.append(["streaming step per chunk: vidsel cpu", step_ours, "", "", "", ""])
    table.rows.append(["streaming step per chunk: unmasked SDPA on the prefix", step_sdpa, "", "", "", ""])

    ours_fwd, ours_fb = fwd_ms["vidsel cpu"], fwd_bwd_ms["vidsel cpu"]
    causal_fwd, causal_fb = fwd_ms["(c) SDPA is_causal (floor)"], fwd_bwd_ms["(c) SDPA is_causal (floor)"]
    # Headline: the ratio to the floor (PyTorch's causal flash kernel on the same machine). The speed-up over
    # the dense mask is bounded by how slow this machine's dense SDPA is: 3x where dense/causal allows it.
    table.check("fwd time / SDPA causal fwd (headline)", ours_fwd / causal_fwd, "<= 1.08", ours_fwd / causal_fwd <= 1.08)
    table.check("fwd+bwd time / SDPA causal fwd+bwd", ours_fb / causal_fb, "<= 1.0", ours_fb / causal_fb <= 1.0)
    dense_target = 3.0 if dense_fwd / causal_fwd >= 3.0 else 2.2
    table.check("fwd speedup vs (a) dense-mask SDPA", dense_fwd / ours_fwd, f">= {dense_target:g}x",
                dense_fwd / ours_fwd >= dense_target)
    table.check("fwd+bwd speedup vs (a) dense-mask SDPA", dense_fb / ours_fb, ">= 2.5x", dense_fb / ours_fb >= 2.5)
    loop_fwd = fwd_ms["per-chunk SDPA loop"]
    table.check("fwd speedup vs per-chunk SDPA loop", loop_fwd / ours_fwd, "> 1x", loop_fwd / ours_fwd > 1.0)
    output_mb = result_mb(q)
    table.check(
        "fwd extra memory MiB (O(L): at most one q-sized tensor, no L x L)",
        extra_mb["vidsel cpu"], f"<= {output_mb:.0f}", extra_mb["vidsel cpu"] <= output_mb,
    )
    table.notes.append(
        "fwd extra MiB: allocator peak during the forward minus its output (profiler; the cpu kernel's "
        "per-thread scratch, a 256 x 512 score tile and a 512 x Dh packed key panel, 0.6 MiB per thread at "
        "Dh = 64, is malloc'd outside the torch allocator). "
        "Streaming step: mean over the 16 chunks of one chunk of 256 queries against its cached key prefix."
    )
    table.notes.append(
        "Why the fused kernel can run under the causal 'floor': its tile products use the GEMM chosen per machine "
        "(csrc/cpu/gemm.h: vidsel's AVX-512 register tiles where MKL takes its AVX2 path, as on AMD CPUs; the BLAS "
        "where it runs full AVX-512, as on Intel), while SDPA's CPU flash kernel always goes through MKL."
    )
    table.notes.append(gemm_paths_note(
        ("attention_tile",),
        "SDPA's CPU flash attention, tile products through ATen cpublas (the BLAS sgemm); FlexAttention as "
        "inductor-generated C++",
    ))
    cold = cold_calls_ms(__name__, "cold_contenders", list(COLD))
    cold_tab = cold_table(
        "chunk_attention_cold", f"chunk attention forward, cold calls (same shapes, {torch.get_num_threads()} threads)",
        cold, fwd_ms, "(c) SDPA is_causal (floor)",
    )
    return [table, cold_tab]
