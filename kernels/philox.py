"""Philox4x32-10 noise for the Triton kernels: the stream of vidsel/reference/philox.py.

`tl.philox(seed, c0, c1, c2, c3)` is Random123's Philox4x32-10 with key (seed mod 2**32,
seed div 2**32), the same as the reference (checked word for word in tests/ops/test_perturbed_topk.py).
Item l of (row, sample) uses counter (l div 4, sample, row, stream) and word l mod 4; the transforms
below are the reference's, in float64 (constants built as float64, never rounded through float32).
"""

import torch
import triton
import triton.language as tl

from vidsel.kernels import configs

TWO_PI = tl.constexpr(6.283185307179586)
INV_2_POW_32 = tl.constexpr(2.3283064365386963e-10)


@triton.jit
def _words(seed, items, sample, row, stream: tl.constexpr):
    """The 4 Philox words of every item's counter (items: block of int positions)."""
    c0 = (items // 4).to(tl.uint32)
    zero = items * 0
    c1 = (zero + sample).to(tl.uint32)
    c2 = (zero + row).to(tl.uint32)
    c3 = (zero + stream).to(tl.uint32)
    return tl.philox(seed, c0, c1, c2, c3)


@triton.jit
def _to_uniform(word):
    return (word.to(tl.float64) + 0.5) * tl.full([], INV_2_POW_32, tl.float64)


@triton.jit
def uniform(seed, items, sample, row, stream: tl.constexpr):
    """float64 uniforms in (0, 1): word l mod 4 of counter (l div 4, sample, row, stream)."""
    w0, w1, w2, w3 = _words(seed, items, sample, row, stream)
    lane = items % 4
    word = tl.where(lane == 0, w0, tl.where(lane == 1, w1, tl.where(lane == 2, w2, w3)))
    return _to_uniform(word)


@triton.jit
def normal(seed, items, sample, row, stream: tl.constexpr):
    """float64 standard normals: Box-Muller on words (0, 1) for l mod 4 < 2, (2, 3) otherwise;
    even l takes the cosine, odd l the sine."""
    w0, w1, w2, w3 = _words(seed, items, sample, row, stream)
    lane = items % 4
    radius_word = tl.where(lane < 2, w0, w2)
    angle_word = tl.where(lane < 2, w1, w3)
    radius = tl.sqrt(-2.0 * tl.log(_to_uniform(radius_word)))
    angle = tl.full([], TWO_PI, tl.float64) * _to_uniform(angle_word)
    return radius * tl.where(lane % 2 == 0, tl.cos(angle), tl.sin(angle))


@triton.jit
def gumbel(seed, items, sample, row, stream: tl.constexpr):
    """float64 standard Gumbel noise -log(-log(u))."""
    return -tl.log(-tl.log(uniform(seed, items, sample, row, stream)))


@triton.jit
def _noise_kernel(out_ptr, seed, SAMPLES, L, STREAM: tl.constexpr, KIND: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    sample = tl.program_id(1)
    items = tl.arange(0, BLOCK)
    for start in range(0, L, BLOCK):
        pos = start + items
        if KIND == 0:
            value = uniform(seed, pos, sample, row, STREAM)
        elif KIND == 1:
            value = normal(seed, pos, sample, row, STREAM)
        else:
            value = gumbel(seed, pos, sample, row, STREAM)
        tl.store(out_ptr + (row * SAMPLES + sample) * L + pos, value, mask=pos < L)


def philox_noise(seed: int, batch: int, samples: int, length: int, stream: int, kind: int, device="cpu"):
    """(B, S, L) float64 noise of the stream (kind 0 uniform, 1 normal, 2 gumbel): a test hook."""
    out = torch.empty(batch, samples, length, dtype=torch.float64, device=device)
    if out.numel():
        config = configs.launch("philox", 1, device)
        _noise_kernel[(batch, samples)](out, seed, samples, length, STREAM=stream, KIND=kind, **config.kwargs())
    return out


def aot_specs():
    """The GPU launches of the noise hook (float64 output, every kind, both streams' code paths)."""
    config = configs.GPU["philox"][1]
    return [configs.AotSpec(_noise_kernel, "philox", "fp64", config, dict(STREAM=1, KIND=kind, BLOCK=config["BLOCK"]),
                            types=dict(seed="i64"), data="fp64", variant=("uniform", "normal", "gumbel")[kind])
            for kind in range(3)]
