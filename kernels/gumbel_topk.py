"""Gumbel-softmax top-k (MIST §3.2, Appendix A) in Triton: one program per row walks its k draws.

Draw t perturbs the logits with g_t (kernels/philox.py, counter (l div 4, t, row, stream 2)); the
hard pick is the first maximum among the allowed items, the soft row the softmax / tau over them.
Without replacement the picks of earlier draws stay masked in a register vector. Backward
regenerates the soft rows and applies the softmax Jacobian (straight-through for hard=True).
A row is one register tile (BLOCK_L = next power of two of L), so on a GPU rows are bounded by the
largest entry of the launch table; 1/tau enters as a float64 tensor.
"""

import torch
import triton
import triton.language as tl

from vidsel.kernels import configs, philox

STREAM = tl.constexpr(2)  # vidsel.reference.philox.STREAM_GUMBEL_TOPK


@triton.jit
def _draw(logits, allowed, seed, row, draw, items, inv_tau, BLOCK_L: tl.constexpr):
    """(soft row, hard pick) of one draw given the row's float64 logits and allowed mask."""
    perturbed = logits + philox.gumbel(seed, items, draw, row, STREAM)
    perturbed = tl.where(allowed, perturbed, float("-inf"))
    # pick: the first maximum among allowed numbers; NaN ranks after every number (the first allowed
    # NaN only when no number is left)
    numeric = allowed & (perturbed == perturbed)
    top = tl.max(tl.where(numeric, perturbed, float("-inf")), axis=0)
    has_number = tl.sum(numeric.to(tl.int32), axis=0) > 0
    candidate = tl.where(has_number, numeric & (perturbed == top), allowed)
    pick = tl.min(tl.where(candidate, items, BLOCK_L), axis=0)
    weight = tl.where(allowed, tl.exp((perturbed - top) * inv_tau), 0.0)
    return weight / tl.sum(weight, axis=0), pick


@triton.jit
def _forward_kernel(logits_ptr, out_ptr, seed, inv_tau_ptr, L, K, HARD: tl.constexpr, REPLACEMENT: tl.constexpr,
                    BLOCK_L: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    inv_tau = tl.load(inv_tau_ptr)
    items = tl.arange(0, BLOCK_L)
    mask = items < L
    logits = tl.load(logits_ptr + row * L + items, mask=mask, other=0.0).to(tl.float64)
    allowed = mask
    for draw in range(0, K):
        soft, pick = _draw(logits, allowed, seed, row, draw, items, inv_tau, BLOCK_L)
        if HARD:
            value = (items == pick).to(tl.float64)
        else:
            value = soft
        tl.store(out_ptr + (row * K + draw) * L + items, value, mask=mask)
        if not REPLACEMENT:
            allowed = allowed & (items != pick)


@triton.jit
def _backward_kernel(logits_ptr, grad_ptr, out_ptr, seed, inv_tau_ptr, L, K, REPLACEMENT: tl.constexpr,
                     BLOCK_L: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    inv_tau = tl.load(inv_tau_ptr)
    items = tl.arange(0, BLOCK_L)
    mask = items < L
    logits = tl.load(logits_ptr + row * L + items, mask=mask, other=0.0).to(tl.float64)
    allowed = mask
    acc = tl.zeros((BLOCK_L,), tl.float64)
    for draw in range(0, K):
        soft, pick = _draw(logits, allowed, seed, row, draw, items, inv_tau, BLOCK_L)
        g = tl.load(grad_ptr + (row * K + draw) * L + items, mask=mask, other=0.0).to(tl.float64)
        acc += soft * (g - tl.sum(g * soft, axis=0)) * inv_tau
        if not REPLACEMENT:
            allowed = allowed & (items != pick)
    tl.store(out_ptr + row * L + items, acc, mask=mask)


def _launch(logits: torch.Tensor) -> dict:
    """BLOCK_L (the whole row) and the warps of the GPU table entry holding it."""
    block = configs.next_power_of_2(logits.shape[1])
    if not configs.on_gpu(logits.device):
        return dict(BLOCK_L=block)
    table = configs.GPU["gumbel_topk"]
    if block > max(table):
        raise ValueError(f"triton gumbel_topk on a GPU handles rows up to {max(table)} items, got {logits.shape[1]}")
    return dict(BLOCK_L=block, **configs.launch("gumbel_topk", block, logits.device).kwargs())


def gumbel_topk(logits: torch.Tensor, k: int, tau: float, hard: bool, replacement: bool, seed: int) -> torch.Tensor:
    """(B, L) -> (B, k, L) one-hot or soft draws in logits' dtype."""
    logits = logits.contiguous()
    batch, length = logits.shape
    out = torch.empty(batch, k, length, dtype=torch.float64, device=logits.device)
    inv_tau = configs.scalar(1.0 / tau, torch.float64, logits.device)
    if out.numel():
        _forward_kernel[(batch,)](logits, out, seed, inv_tau, length, k, HARD=hard, REPLACEMENT=replacement,
                                  **_launch(logits))
    return out.to(logits.dtype)


def gumbel_topk_backward(grad: torch.Tensor, logits: torch.Tensor, k: int, tau: float, replacement: bool,
                         seed: int) -> torch.Tensor:
    """(B, k, L) grad -> (B, L): gradient of the soft draws."""
    logits, grad = logits.contiguous(), grad.contiguous()
    batch, length = logits.shape
    out = torch.zeros(batch, length, dtype=torch.float64, device=logits.device)
    inv_tau = configs.scalar(1.0 / tau, torch.float64, logits.device)
    if out.numel():
        _backward_kernel[(batch,)](logits, grad, out, seed, inv_tau, length, k, REPLACEMENT=replacement,
                                   **_launch(logits))
    return out.to(logits.dtype)


def aot_specs():
    """GPU launches: every logits dtype, each table entry at its largest row, both flags' variants."""
    specs = []
    for block, config in configs.GPU["gumbel_topk"].items():
        for dtype in configs.DTYPES:
            name = configs.TL_NAMES[dtype]
            types = dict(seed="i64", inv_tau_ptr="*fp64", out_ptr="*fp64")
            for hard, replacement in ((False, False), (True, True)):
                specs.append(configs.AotSpec(
                    _forward_kernel, "gumbel_topk", name, config,
                    dict(HARD=hard, REPLACEMENT=replacement, BLOCK_L=block), types=types, data=name,
                    variant=f"L={block}" + (" hard" if hard else "") + (" replacement" if replacement else "")))
            specs.append(configs.AotSpec(_backward_kernel, "gumbel_topk", name, config,
                                         dict(REPLACEMENT=False, BLOCK_L=block), types=types, data=name,
                                         variant=f"L={block}"))
    return specs
