"""`chunk_causal_attention`: block-causal attention over time chunks (Mirasol3B §3.3.1, eq. 8).

A query in chunk t attends to every key of chunks <= t: full attention inside a chunk, causal across
chunks (the Combiner's eq. 2 and the latent autoregressive model of §3.3). The fused backends never
build the L x L mask: flash-style tiles with an online softmax stop at the end of each query's chunk
(tiles above the chunk diagonal are skipped), save the logsumexp, and the backward recomputes scores.

Two custom ops carry the work, each taking the backend name:
    vidsel::chunk_attention(q, k, v, chunk_lens, key_bias, scale, impl) -> (out, lse)
    vidsel::chunk_attention_backward(grad_out, q, k, v, out, lse, chunk_lens, key_bias, scale, bias_grad, impl)
        -> (grad_q, grad_k, grad_v, grad_bias)
chunk_lens is a list of ints (a compile-time constant under torch.compile), so the FLOP formula can
count exactly the unmasked (query, key) pairs. The op bodies check it once and turn it into the chunk
layout (reference.chunk_layout: each query's key end, each key's first query row), which every
backend receives instead of the lengths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from vidsel.ops._dispatch import PREFER_TRITON_ON_GPU, OpBackends, resolve, run_backend
from vidsel.ops._validation import check_int, check_tensor, refuse_double_backward
from vidsel.reference import chunk_attention as reference


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_chunk_lens(chunk_lens: list[int], lk: int) -> None:
    """The one check of chunk lengths (the kernels trust the layout built from them)."""
    if not chunk_lens or any(n <= 0 for n in chunk_lens) or sum(chunk_lens) != lk:
        raise ValueError(f"chunk_lens must be positive and sum to L={lk} (k's length), got {chunk_lens}")


def _layout(chunk_lens: list[int], q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """Checks chunk_lens against k and returns reference.chunk_layout: key_end (Lq,), first_row (Lk,)."""
    _check_chunk_lens(chunk_lens, k.shape[2])
    return reference.chunk_layout(chunk_lens, q.shape[2], q.device)


def _reference_backward(grad_out, q, k, v, out, lse, key_end, first_row, key_bias, scale, bias_grad):
    grads = reference.chunk_causal_attention_backward(grad_out, q, k, v, key_end, key_bias, scale)
    return grads[0], grads[1], grads[2], grads[3] if bias_grad else q.new_empty(0)


# The fused kernels take the layout; the reference rebuilds its dense mask from key_end. The CPU backward
# walks query tiles and needs only key_end; the key-major GPU backward kernels start at first_row.
CHUNK_ATTENTION = OpBackends("chunk_attention", reference=reference.chunk_causal_attention, triton="chunk_attention",
                             **PREFER_TRITON_ON_GPU)
CHUNK_ATTENTION_BACKWARD = OpBackends("chunk_attention_backward", reference=_reference_backward,
                                      triton="chunk_attention", **PREFER_TRITON_ON_GPU)


@torch.library.custom_op("vidsel::chunk_attention", mutates_args=())
def _chunk_attention(
    q: Tensor, k: Tensor, v: Tensor, chunk_lens: list[int], key_bias: Optional[Tensor], scale: float, impl: str
) -> tuple[Tensor, Tensor]:
    key_end, _ = _layout(chunk_lens, q, k)
    return tuple(run_backend(CHUNK_ATTENTION, impl, q, k, v, key_end, key_bias, scale))


@torch.library.custom_op("vidsel::chunk_attention_backward", mutates_args=())
def _chunk_attention_backward(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    chunk_lens: list[int],
    key_bias: Optional[Tensor],
    scale: float,
    bias_grad: bool,
    impl: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    key_end, first_row = _layout(chunk_lens, q, k)
    return tuple(run_backend(CHUNK_ATTENTION_BACKWARD, impl, grad_out, q, k, v, out, lse, key_end, first_row,
                             key_bias, scale, bias_grad))


@_chunk_attention.register_fake
def _(q, k, v, chunk_lens, key_bias, scale, impl):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=_lse_dtype(q.dtype))


@_chunk_attention_backward.register_fake
def _(grad_out, q, k, v, out, lse, chunk_lens, key_bias, scale, bias_grad, impl):
    grad_bias = key_bias.new_empty(key_bias.shape) if bias_grad else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), grad_bias


def _setup_context(ctx, inputs, output):
    q, k, v, chunk_lens, key_bias, scale, impl = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, key_bias, out, lse)
    ctx.chunk_lens, ctx.scale, ctx.impl = chunk_lens, scale, impl


def _backward(ctx, grad_out, grad_lse):
    q, k, v, key_bias, out, lse = ctx.saved_tensors
    bias_grad = key_bias is not None and ctx.needs_input_grad[4]
    grad_q, grad_k, grad_v, grad_bias = _chunk_attention_backward(
        grad_out.contiguous(), q, k, v, out, lse, ctx.chunk_lens, key_bias, ctx.scale, bias_grad, ctx.impl
    )
    return grad_q, grad_k, grad_v, None, grad_bias if bias_grad else None, None, None


_chunk_attention.register_autograd(_backward, setup_context=_setup_context)
refuse_double_backward(_chunk_attention_backward, "chunk_causal_attention")


def visible_pairs(chunk_lens: Sequence[int], lq: int) -> int:
    """Number of unmasked (query, key) pairs: each of the last lq positions sees up to its chunk end."""
    total, start, lk = 0, 0, sum(chunk_lens)
    for n in chunk_lens:
        end = start + n
        queries_here = max(0, end - max(start, lk - lq))
        total += queries_here * end
        start = end
    return total


@register_flop_formula(torch.ops.vidsel.chunk_attention)
def _chunk_attention_flops(q_shape, k_shape, v_shape, chunk_lens, *args, **kwargs) -> int:
    batch, heads, lq, dim = q_shape
    return 4 * batch * heads * dim * visible_pairs(chunk_lens, lq)  # q k^T and P v, 2 FLOPs per MAC


@register_flop_formula(torch.ops.vidsel.chunk_attention_backward)
def _chunk_attention_backward_flops(grad_shape, q_shape, k_shape, v_shape, out_shape, lse_shape, chunk_lens, *args, **kwargs) -> int:
    batch, heads, lq, dim = q_shape
    # recomputed q k^T, dO v^T, P^T dO, dS k, dS^T q
    return 10 * batch * heads * dim * visible_pairs(chunk_lens, lq)


def _resolve_chunk_lens(chunk_size, chunk_lens, lk: int) -> list[int]:
    if (chunk_size is None) == (chunk_lens is None):
        raise ValueError("pass exactly one of chunk_size and chunk_lens")
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, low=1)
        # The chunk list is a static op argument: under torch.compile a symbolic length is specialised
        # here (one graph per distinct length); // and % because divmod does not take a symbolic int.
        lk = int(lk)
        full, rest = lk // chunk_size, lk % chunk_size
        return [chunk_size] * full + ([rest] if rest else [])
    if isinstance(chunk_lens, Tensor):
        if chunk_lens.dim() != 1 or chunk_lens.is_floating_point() or chunk_lens.is_complex():
            raise ValueError(
                f"chunk_lens must be a 1-D integer tensor, got {chunk_lens.dtype} {tuple(chunk_lens.shape)}"
            )
        if torch.compiler.is_compiling():
            return _traced_chunk_lens(chunk_lens, lk)
        chunk_lens = chunk_lens.tolist()
    if not isinstance(chunk_lens, Sequence) or any(isinstance(n, bool) or not isinstance(n, int) for n in chunk_lens):
        raise TypeError(f"chunk_lens must be a sequence of ints or a 1-D integer tensor, got {chunk_lens!r}")
    chunk_lens = list(chunk_lens)
    _check_chunk_lens(chunk_lens, lk)
    return chunk_lens


def _traced_chunk_lens(chunk_lens: Tensor, lk) -> list:
    """A tensor of chunk lengths under torch.compile: its values become unbacked symbolic ints (read
    once at run time, no graph break); the checks turn into runtime asserts, and the op body checks
    the concrete lengths again before any kernel runs."""
    lens = chunk_lens.tolist()
    for n in lens:
        torch._check(n >= 1, lambda: "chunk_lens must be positive and sum to k's length")
    torch._check(sum(lens) == lk, lambda: "chunk_lens must be positive and sum to k's length")
    return lens


def chunk_causal_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    chunk_size: int | None = None,
    chunk_lens: Sequence[int] | Tensor | None = None,
    key_bias: Tensor | None = None,
    scale: float | None = None,
    impl: str = "auto",
) -> Tensor:
    """Block-causal attention over time chunks (Mirasol3B eq. 8), fused: no L x L mask or scores.

    Args:
        q: (B, H, Lq, Dh) queries; they are the LAST Lq of the Lk positions (Lq < Lk: streaming prefill
            against a cache of earlier chunks).
        k, v: (B, H, Lk, Dh) keys and values, same dtype and device as q.
        chunk_size: equal chunks of this many positions (the last one shorter when it does not divide Lk).
        chunk_lens: (T,) lengths of variable chunks summing to Lk (list of ints or an integer tensor;
            a tensor is read on the host; under torch.compile its values are read at run time, so one
            graph serves every layout of T chunks). Exactly one of chunk_size / chunk_lens.
        key_bias: (B, Lk) added to every score column, e.g. log(token size) for TESTA/ToMe proportional
            attention. Differentiable.
        scale: score scale, default 1/sqrt(Dh).
        impl: "auto" | "reference" | "cpu" | "triton" | "cuda".

    Returns:
        (B, H, Lq, Dh): out_i = sum_{j < end(chunk(i))} softmax_j(q_i k_j * scale + key_bias_j) v_j.
        One chunk is full attention; chunk_size=1 is ordinary causal attention.

    Contract: a key of a later chunk never reaches a query, in forward or backward, not even a NaN
    or inf in it (masked keys do not enter the products at all); visible non-finite values propagate.
    Under torch.compile each distinct chunk_size layout (each sequence length) is one graph; a
    chunk_lens tensor is one graph for all layouts of its T chunks. Double backward raises RuntimeError.
    """
    check_tensor("q", q, ndim=4, floating=True)
    check_tensor("k", k, ndim=4, like=q)
    check_tensor("v", v, ndim=4, like=q)
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
    batch, heads, lq, dim = q.shape
    lk = k.shape[2]
    check_tensor("k", k, shape=(batch, heads, None, dim))
    check_tensor("v", v, shape=(batch, heads, lk, dim))
    if lq > lk:
        raise ValueError(f"q has Lq={lq} positions but k only Lk={lk}; queries must be the last Lq of the keys")
    lens = _resolve_chunk_lens(chunk_size, chunk_lens, lk)
    if key_bias is not None:
        check_tensor("key_bias", key_bias, floating=True, like=q, shape=(batch, lk))
        if key_bias.dtype != q.dtype:
            raise TypeError(f"key_bias must have q's dtype {q.dtype}, got {key_bias.dtype}")
    if scale is None:
        scale = 1.0 / math.sqrt(dim) if dim > 0 else 1.0
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise TypeError(f"scale must be a finite float, got {scale!r}")
    impl = resolve("chunk_causal_attention", impl, q.device, CHUNK_ATTENTION, CHUNK_ATTENTION_BACKWARD)
    out, _ = _chunk_attention(q, k, v, lens, key_bias, float(scale), impl)
    return out
