"""Perturbed-maximum top-k (STTS §3.2 eq. 7-8) in Triton: noise drawn and regenerated in-kernel.

Every item of sample s is ranked against every other item of s + sigma Z_s (kernels/philox.py; ties
to the lower position) in BLOCK_I x BLOCK_J tiles, so registers stay bounded for any row length;
rank < k keeps an item, and a running count numbers the kept items in input order:
  forward   grid (B, CHUNKS), samples s = chunk, chunk + CHUNKS, ...:
            counts[b, slot, l] += 1 (int32 atomics: exact, order-free)
  backward  grid (B, CHUNKS): g[b, s] = sum_l G[b, slot_l, l] over the kept l;
            grid (B, L / BLOCK_I): grad[b, l] = sum_s g[b, s] Z_s[l] / (n sigma), samples in order
Neither (B, n, L) noise nor (B, n, k, L) one-hots exist in memory. sigma enters as a float64 tensor
(a Python float would be float32 in a compiled kernel).
"""

import torch
import triton
import triton.language as tl

from vidsel.kernels import configs, philox

STREAM = tl.constexpr(1)  # vidsel.reference.philox.STREAM_PERTURBED_TOPK
MAX_CHUNKS = 16


@triton.jit
def _perturbed(scores_ptr, seed, sigma, row, sample, L, items):
    """(s + sigma Z_s) of one sample's items as float64, -inf past L; and Z_s."""
    mask = items < L
    score = tl.load(scores_ptr + row * L + items, mask=mask, other=0.0).to(tl.float64)
    z = philox.normal(seed, items, sample, row, STREAM)
    return tl.where(mask, score + sigma * z, float("nan")), z  # padding ranks after every item


@triton.jit
def _beats(other, other_pos, value, pos):
    """Whether `other` ranks before `value`: larger first, NaN after every number, then lower position."""
    nan_other = other != other
    nan_value = value != value
    numbers = (other > value) | ((other == value) & (other_pos < pos))
    return tl.where(nan_other | nan_value, nan_value & ((nan_other == 0) | (other_pos < pos)), numbers)


@triton.jit
def _kept(scores_ptr, seed, sigma, row, sample, value, items, L, K, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    """Whether each item of the tile is among the k largest of the sample (ties: lower position)."""
    rank = tl.zeros((BLOCK_I,), tl.int32)
    for j0 in range(0, L, BLOCK_J):
        others = j0 + tl.arange(0, BLOCK_J)
        other_value, _ = _perturbed(scores_ptr, seed, sigma, row, sample, L, others)
        rank += tl.sum(_beats(other_value[None, :], others[None, :], value[:, None], items[:, None]).to(tl.int32),
                       axis=1)
    return (rank < K) & (items < L)


@triton.jit
def _forward_kernel(scores_ptr, counts_ptr, seed, sigma_ptr, L, K, NUM_SAMPLES, CHUNKS,
                    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    sigma = tl.load(sigma_ptr)
    for sample in range(chunk, NUM_SAMPLES, CHUNKS):
        placed = 0
        for i0 in range(0, L, BLOCK_I):
            items = i0 + tl.arange(0, BLOCK_I)
            value, _ = _perturbed(scores_ptr, seed, sigma, row, sample, L, items)
            kept = _kept(scores_ptr, seed, sigma, row, sample, value, items, L, K, BLOCK_I, BLOCK_J)
            slot = placed + tl.cumsum(kept.to(tl.int32), axis=0) - 1
            tl.atomic_add(counts_ptr + (row * K + slot) * L + items, tl.full((BLOCK_I,), 1, tl.int32), mask=kept)
            placed += tl.sum(kept.to(tl.int32), axis=0)


@triton.jit
def _sample_grad_kernel(scores_ptr, grad_ptr, g_ptr, seed, sigma_ptr, L, K, NUM_SAMPLES, CHUNKS,
                        BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    sigma = tl.load(sigma_ptr)
    for sample in range(chunk, NUM_SAMPLES, CHUNKS):
        placed = 0
        total = tl.zeros((BLOCK_I,), tl.float64)
        for i0 in range(0, L, BLOCK_I):
            items = i0 + tl.arange(0, BLOCK_I)
            value, _ = _perturbed(scores_ptr, seed, sigma, row, sample, L, items)
            kept = _kept(scores_ptr, seed, sigma, row, sample, value, items, L, K, BLOCK_I, BLOCK_J)
            slot = placed + tl.cumsum(kept.to(tl.int32), axis=0) - 1
            total += tl.load(grad_ptr + (row * K + slot) * L + items, mask=kept, other=0.0).to(tl.float64)
            placed += tl.sum(kept.to(tl.int32), axis=0)
        tl.store(g_ptr + row * NUM_SAMPLES + sample, tl.sum(total, axis=0))


@triton.jit
def _combine_kernel(g_ptr, out_ptr, seed, scale_ptr, L, NUM_SAMPLES, BLOCK_I: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    items = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    acc = tl.zeros((BLOCK_I,), tl.float64)
    for sample in range(0, NUM_SAMPLES):
        acc += tl.load(g_ptr + row * NUM_SAMPLES + sample) * philox.normal(seed, items, sample, row, STREAM)
    tl.store(out_ptr + row * L + items, acc * tl.load(scale_ptr), mask=items < L)


def perturbed_topk(scores: torch.Tensor, k: int, num_samples: int, sigma: float, seed: int) -> torch.Tensor:
    """(B, L) -> (B, k, L) indicators (eq. 7) in scores' dtype."""
    scores = scores.contiguous()
    batch, length = scores.shape
    chunks = min(num_samples, MAX_CHUNKS)
    config = configs.launch("perturbed_topk", length, scores.device)
    counts = torch.zeros(batch, k, length, dtype=torch.int32, device=scores.device)
    sigma_t = configs.scalar(sigma, torch.float64, scores.device)
    if batch and length:
        _forward_kernel[(batch, chunks)](scores, counts, seed, sigma_t, length, k, num_samples, chunks,
                                         **config.kwargs())
    return (counts.to(torch.float64) / num_samples).to(scores.dtype)


def perturbed_topk_backward(grad: torch.Tensor, scores: torch.Tensor, k: int, num_samples: int, sigma: float,
                            seed: int) -> torch.Tensor:
    """(B, k, L) grad -> (B, L) scores gradient (eq. 8)."""
    if sigma == 0:
        return torch.zeros_like(scores)
    scores, grad = scores.contiguous(), grad.contiguous()
    batch, length = scores.shape
    chunks = min(num_samples, MAX_CHUNKS)
    config = configs.launch("perturbed_topk", length, scores.device)
    out = torch.zeros(batch, length, dtype=torch.float64, device=scores.device)
    if not (batch and length):
        return out.to(scores.dtype)
    g = torch.empty(batch, num_samples, dtype=torch.float64, device=scores.device)
    sigma_t = configs.scalar(sigma, torch.float64, scores.device)
    _sample_grad_kernel[(batch, chunks)](scores, grad, g, seed, sigma_t, length, k, num_samples, chunks,
                                         **config.kwargs())
    scale = configs.scalar(1.0 / (num_samples * sigma), torch.float64, scores.device)
    _combine_kernel[(batch, triton.cdiv(length, config["BLOCK_I"]))](
        g, out, seed, scale, length, num_samples, BLOCK_I=config["BLOCK_I"], num_warps=config.num_warps)
    return out.to(scores.dtype)


def aot_specs():
    """GPU launches: every scores dtype (the noise and ranking are float64 throughout)."""
    config = configs.GPU["perturbed_topk"][1]
    tiles = dict(BLOCK_I=config["BLOCK_I"], BLOCK_J=config["BLOCK_J"])
    specs = []
    for dtype in configs.DTYPES:
        name = configs.TL_NAMES[dtype]
        common = dict(seed="i64", sigma_ptr="*fp64")
        specs += [
            configs.AotSpec(_forward_kernel, "perturbed_topk", name, config, tiles,
                            types=dict(common, counts_ptr="*i32"), data=name),
            configs.AotSpec(_sample_grad_kernel, "perturbed_topk", name, config, tiles,
                            types=dict(common, g_ptr="*fp64"), data=name),
            configs.AotSpec(_combine_kernel, "perturbed_topk", name, config, dict(BLOCK_I=config["BLOCK_I"]),
                            types=dict(seed="i64", g_ptr="*fp64", scale_ptr="*fp64", out_ptr="*fp64"), data=name),
        ]
    return specs
