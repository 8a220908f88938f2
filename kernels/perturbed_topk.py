"""Perturbed-maximum top-k (STTS §3.2 eq. 7-8) in Triton: noise drawn and regenerated in-kernel.

Grid (B, CHUNKS): a program walks the samples s = chunk, chunk + CHUNKS, ... of one row. Per sample
it draws Z_s (kernels/philox.py), ranks every item of s + sigma Z_s against every other (ties to
the lower position; tiles of BLOCK_M columns so long rows stay bounded), keeps rank < k and numbers
the kept items in input order with a cumulative sum:
  forward   counts[b, pos, l] += 1 (int32 atomics: exact, order-free)
  backward  g_s = sum_l G[b, pos_l, l] over the kept l;  partial[b, chunk, :] += g_s Z_s
Neither (B, n, L) noise nor (B, n, k, L) one-hots exist in memory.
"""

import torch
import triton
import triton.language as tl

from vidsel.kernels import philox

STREAM = 1  # vidsel.reference.philox.STREAM_PERTURBED_TOPK
BLOCK_M = 64
MAX_CHUNKS = 16


@triton.jit
def _perturbed_row(scores_ptr, seed, sigma, row, sample, L, items, BLOCK_L: tl.constexpr):
    """(s + sigma Z_s) of one sample as float64, -inf past L; and Z_s."""
    mask = items < L
    score = tl.load(scores_ptr + row * L + items, mask=mask, other=0.0).to(tl.float64)
    z = philox.normal(seed, items, sample, row, STREAM)
    value = tl.where(mask, score + sigma * z, float("-inf"))
    return value, z


@triton.jit
def _kept_positions(scores_ptr, seed, sigma, row, sample, value, L, K, items,
                    BLOCK_L: tl.constexpr, BLOCK_M: tl.constexpr):
    """For every item: whether it is among the k largest (ties: lower position) and its slot."""
    rank = tl.zeros((BLOCK_L,), tl.int32)
    for m0 in range(0, L, BLOCK_M):
        others = m0 + tl.arange(0, BLOCK_M)
        other_value, _ = _perturbed_row(scores_ptr, seed, sigma, row, sample, L, others, BLOCK_M)
        before = (other_value[None, :] > value[:, None]) | (
            (other_value[None, :] == value[:, None]) & (others[None, :] < items[:, None]))
        rank += tl.sum(before.to(tl.int32), axis=1)
    kept = (rank < K) & (items < L)
    slot = tl.cumsum(kept.to(tl.int32), axis=0) - 1
    return kept, slot


@triton.jit
def _forward_kernel(scores_ptr, counts_ptr, seed, sigma, L, K, NUM_SAMPLES, CHUNKS,
                    BLOCK_L: tl.constexpr, BLOCK_M: tl.constexpr):
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    items = tl.arange(0, BLOCK_L)
    for sample in range(chunk, NUM_SAMPLES, CHUNKS):
        value, _ = _perturbed_row(scores_ptr, seed, sigma, row, sample, L, items, BLOCK_L)
        kept, slot = _kept_positions(scores_ptr, seed, sigma, row, sample, value, L, K, items, BLOCK_L, BLOCK_M)
        target = counts_ptr + (row * K + slot) * L + items
        tl.atomic_add(target, tl.full((BLOCK_L,), 1, tl.int32), mask=kept)


@triton.jit
def _backward_kernel(scores_ptr, grad_ptr, partial_ptr, seed, sigma, L, K, NUM_SAMPLES, CHUNKS,
                     BLOCK_L: tl.constexpr, BLOCK_M: tl.constexpr):
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    items = tl.arange(0, BLOCK_L)
    acc = tl.zeros((BLOCK_L,), tl.float64)
    for sample in range(chunk, NUM_SAMPLES, CHUNKS):
        value, z = _perturbed_row(scores_ptr, seed, sigma, row, sample, L, items, BLOCK_L)
        kept, slot = _kept_positions(scores_ptr, seed, sigma, row, sample, value, L, K, items, BLOCK_L, BLOCK_M)
        picked = tl.load(grad_ptr + (row * K + slot) * L + items, mask=kept, other=0.0).to(tl.float64)
        acc += tl.sum(picked, axis=0) * z
    tl.store(partial_ptr + (row * CHUNKS + chunk) * L + items, acc, mask=items < L)


def _grid(scores: torch.Tensor, num_samples: int):
    chunks = min(num_samples, MAX_CHUNKS)
    block_l = max(16, triton.next_power_of_2(scores.shape[1]))
    return chunks, block_l, min(BLOCK_M, block_l)


def perturbed_topk(scores: torch.Tensor, k: int, num_samples: int, sigma: float, seed: int) -> torch.Tensor:
    """(B, L) -> (B, k, L) indicators (eq. 7) in scores' dtype."""
    scores = scores.contiguous()
    batch, length = scores.shape
    chunks, block_l, block_m = _grid(scores, num_samples)
    counts = torch.zeros(batch, k, length, dtype=torch.int32, device=scores.device)
    _forward_kernel[(batch, chunks)](scores, counts, seed, sigma, length, k, num_samples, chunks,
                                     BLOCK_L=block_l, BLOCK_M=block_m)
    return (counts.to(torch.float64) / num_samples).to(scores.dtype)


def perturbed_topk_backward(grad: torch.Tensor, scores: torch.Tensor, k: int, num_samples: int, sigma: float,
                            seed: int) -> torch.Tensor:
    """(B, k, L) grad -> (B, L) scores gradient (eq. 8)."""
    if sigma == 0:
        return torch.zeros_like(scores)
    scores, grad = scores.contiguous(), grad.contiguous()
    batch, length = scores.shape
    chunks, block_l, block_m = _grid(scores, num_samples)
    partial = torch.empty(batch, chunks, length, dtype=torch.float64, device=scores.device)
    _backward_kernel[(batch, chunks)](scores, grad, partial, seed, sigma, length, k, num_samples, chunks,
                                      BLOCK_L=block_l, BLOCK_M=block_m)
    return (partial.sum(1) / (num_samples * sigma)).to(scores.dtype)
