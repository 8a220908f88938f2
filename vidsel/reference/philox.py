"""The one counter-based random stream shared by every backend of the sampling ops.

Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), exactly as
Random123 and Triton's ``tl.philox`` define it, written with int64 tensor arithmetic so the
reference, the C++ kernels (csrc/cpu/philox.h), the CUDA kernels (csrc/cuda/philox.cuh) and the
Triton kernels (kernels/philox.py) draw identical bits.

Mapping (seed, counter) -> value, for an op drawing a tensor R of shape (B, S, L)
(B batch rows, S samples/draws, L items):

    key     = (seed mod 2**32, seed div 2**32)                     seed in [0, 2**63)
    counter = (l div 4, s, b, stream)                              stream: STREAM_* below
    words   = philox4x32_10(counter, key)                          4 uint32 words
    u_w     = (words[w] + 0.5) * 2**-32                            4 uniforms in (0, 1), exact in float64

    uniform  R[b, s, l] = u_{l mod 4}
    gumbel   R[b, s, l] = -log(-log(u_{l mod 4}))
    normal   R[b, s, l] = Box-Muller on a pair, with (a, c) = (u_0, u_1) for l mod 4 in {0, 1}
             and (a, c) = (u_2, u_3) for l mod 4 in {2, 3}:
                 r = sqrt(-2 log a);  l mod 2 == 0 -> r cos(2 pi c),  l mod 2 == 1 -> r sin(2 pi c)

All transforms run in float64. The integer words are bit-identical in every backend; the float64
transcendental functions may differ by an ulp or two (1e-16 relative), far below any gap that
could reorder perturbed scores, so every backend selects the same indices.
"""

from __future__ import annotations

import math

import torch

MASK32 = 0xFFFFFFFF
ROUND_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
KEY_INCREMENTS = (0x9E3779B9, 0xBB67AE85)
ROUNDS = 10
MAX_SEED = 2**63 - 1

STREAM_PERTURBED_TOPK = 1  # Gaussian Z of the perturbed-maximum top-k (STTS eq. 7-8)
STREAM_GUMBEL_TOPK = 2  # Gumbel noise of the Gumbel-softmax draws (MIST §3.2)


def _mulhilo(a: torch.Tensor, multiplier: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a * multiplier for uint32 a held in int64, without int64 overflow."""
    m_hi, m_lo = multiplier >> 16, multiplier & 0xFFFF
    low_part = a * m_lo  # < 2**48
    upper = a * m_hi + (low_part >> 16)  # < 2**49: the product is upper * 2**16 + low_part % 2**16
    lo = ((upper & 0xFFFF) << 16) | (low_part & 0xFFFF)
    return upper >> 16, lo


def philox4x32(counter: tuple[torch.Tensor, ...], key: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 of counters (c0, c1, c2, c3) (int64 tensors of uint32 values) under key (k0, k1)."""
    c0, c1, c2, c3 = (c.to(torch.int64) & MASK32 for c in counter)
    k0, k1 = key
    for _ in range(ROUNDS):
        hi0, lo0 = _mulhilo(c0, ROUND_MULTIPLIERS[0])
        hi1, lo1 = _mulhilo(c2, ROUND_MULTIPLIERS[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + KEY_INCREMENTS[0]) & MASK32
        k1 = (k1 + KEY_INCREMENTS[1]) & MASK32
    return c0, c1, c2, c3


def split_seed(seed: int) -> tuple[int, int]:
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed={seed} must be in [0, 2**63 - 1]")
    return seed & MASK32, seed >> 32


def uniform_words(seed: int, batch: int, samples: int, length: int, stream: int, device=None) -> torch.Tensor:
    """(B, S, ceil(L/4), 4) float64 uniforms u_w in (0, 1) of every Philox call the op makes."""
    blocks = (length + 3) // 4
    b = torch.arange(batch, device=device).view(batch, 1, 1)
    s = torch.arange(samples, device=device).view(1, samples, 1)
    j = torch.arange(blocks, device=device).view(1, 1, blocks)
    shape = (batch, samples, blocks)
    counter = (j.expand(shape), s.expand(shape), b.expand(shape), torch.full(shape, stream, device=device))
    words = torch.stack(philox4x32(counter, split_seed(seed)), dim=-1)
    return (words.to(torch.float64) + 0.5) * 2.0**-32


def uniform(seed: int, batch: int, samples: int, length: int, stream: int, device=None) -> torch.Tensor:
    """(B, S, L) float64 uniforms in (0, 1) of the stream (see the module docstring)."""
    u = uniform_words(seed, batch, samples, length, stream, device)
    return u.flatten(2)[..., :length]


def normal(seed: int, batch: int, samples: int, length: int, stream: int, device=None) -> torch.Tensor:
    """(B, S, L) float64 standard normals of the stream: Box-Muller on the word pairs (0,1), (2,3)."""
    u = uniform_words(seed, batch, samples, length, stream, device)
    radius = torch.sqrt(-2.0 * torch.log(u[..., 0::2]))  # (B, S, blocks, 2): from u_0 and u_2
    angle = 2.0 * math.pi * u[..., 1::2]  # from u_1 and u_3
    z = torch.stack((radius * torch.cos(angle), radius * torch.sin(angle)), dim=-1)  # (..., pair, cos|sin)
    return z.flatten(2)[..., :length]


def gumbel(seed: int, batch: int, samples: int, length: int, stream: int, device=None) -> torch.Tensor:
    """(B, S, L) float64 standard Gumbel noise -log(-log(u)) of the stream."""
    return -torch.log(-torch.log(uniform(seed, batch, samples, length, stream, device)))


def draw_seed() -> int:
    """A fresh seed from torch's default generator: torch.manual_seed makes seed=None repeatable."""
    return int(torch.randint(0, MAX_SEED, (), dtype=torch.int64).item())
