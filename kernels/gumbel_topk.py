"""Gumbel-softmax top-k (MIST §3.2, Appendix A) in Triton, for rows of any length.

Draw t perturbs the logits with g_t (kernels/philox.py, counter (l div 4, t, row, stream 2)); the
hard pick is the first maximum among the allowed items, the soft row the softmax / tau over them.
A row is walked in blocks of BLOCK_L items, in two launches:
  1. _stats_kernel, one program per row, draw after draw: a pass over the row finds the draw's
     maximum and pick; soft draws take a second pass for sum_l exp((y_l - max) / tau) (and the
     backward's sum_l g_l exp(...)). Without replacement each pick is marked in a (B, L) byte mask
     the next draw reads, so nothing of the row has to fit in registers.
  2. _write_kernel / _grad_kernel, one program per (row, block): regenerate the block's noise and
     write its k draws (or accumulate its gradient over the k draws) from those per-draw numbers.
Backward applies the softmax Jacobian of the soft rows (straight-through for hard=True).
1/tau enters as a float64 tensor; offsets are int64.
"""

import torch
import triton
import triton.language as tl

from vidsel.kernels import configs, philox

STREAM = tl.constexpr(2)  # vidsel.reference.philox.STREAM_GUMBEL_TOPK


@triton.jit
def _perturbed_block(logits_ptr, taken_ptr, seed, row, draw, start, L, REPLACEMENT: tl.constexpr,
                     BLOCK_L: tl.constexpr):
    """Items, float64 perturbed logits and allowed mask of the block of row `row` starting at `start`."""
    items = start + tl.arange(0, BLOCK_L)
    mask = items < L
    logits = tl.load(logits_ptr + row * L + items, mask=mask, other=0.0).to(tl.float64)
    allowed = mask
    if not REPLACEMENT:
        allowed = allowed & (tl.load(taken_ptr + row * L + items, mask=mask, other=1) == 0)
    return items, logits + philox.gumbel(seed, items, draw, row, STREAM), allowed


@triton.jit
def _stats_kernel(logits_ptr, grad_ptr, taken_ptr, top_ptr, total_ptr, dot_ptr, pick_ptr, seed, inv_tau_ptr, L, K,
                  SOFT: tl.constexpr, GRAD: tl.constexpr, REPLACEMENT: tl.constexpr, BLOCK_L: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    inv_tau = tl.load(inv_tau_ptr)
    for draw in range(0, K):
        # the first maximum among allowed numbers; NaN ranks after every number (the first allowed
        # item only when no number is left)
        top = tl.full((), float("-inf"), tl.float64)
        pick = tl.zeros((), tl.int32) + L  # L: none yet
        first_allowed = tl.zeros((), tl.int32) + L
        for start in range(0, L, BLOCK_L):
            items, perturbed, allowed = _perturbed_block(logits_ptr, taken_ptr, seed, row, draw, start, L,
                                                         REPLACEMENT, BLOCK_L)
            numeric = allowed & (perturbed == perturbed)
            block_top = tl.max(tl.where(numeric, perturbed, float("-inf")), axis=0)
            block_pick = tl.min(tl.where(numeric & (perturbed == block_top), items, L), axis=0)
            better = (block_top > top) | ((pick == L) & (block_pick < L))  # earlier blocks keep ties
            top = tl.where(better, block_top, top)
            pick = tl.where(better, block_pick, pick)
            first_allowed = tl.minimum(first_allowed, tl.min(tl.where(allowed, items, L), axis=0))
        pick = tl.where(pick < L, pick, first_allowed)
        if SOFT:
            total = tl.zeros((), tl.float64)
            dot = tl.zeros((), tl.float64)
            for start in range(0, L, BLOCK_L):
                items, perturbed, allowed = _perturbed_block(logits_ptr, taken_ptr, seed, row, draw, start, L,
                                                             REPLACEMENT, BLOCK_L)
                weight = tl.where(allowed, tl.exp((perturbed - top) * inv_tau), 0.0)
                total += tl.sum(weight, axis=0)
                if GRAD:
                    g = tl.load(grad_ptr + (row * K + draw) * L + items, mask=items < L, other=0.0)
                    dot += tl.sum(g.to(tl.float64) * weight, axis=0)
            tl.store(top_ptr + row * K + draw, top)
            tl.store(total_ptr + row * K + draw, total)
            if GRAD:
                tl.store(dot_ptr + row * K + draw, dot / total)
        tl.store(pick_ptr + row * K + draw, pick.to(tl.int64))
        if not REPLACEMENT:
            tl.store(taken_ptr + row * L + pick, 1)
            tl.debug_barrier()  # the next draw's loads (other threads) must see the mark


@triton.jit
def _soft_block(logits_ptr, top_ptr, total_ptr, seed, row, draw, items, mask, allowed, inv_tau, L, K):
    """Draw `draw`'s soft values on one block: exp((y - max) / tau) / sum, 0 where not allowed."""
    logits = tl.load(logits_ptr + row * L + items, mask=mask, other=0.0).to(tl.float64)
    perturbed = logits + philox.gumbel(seed, items, draw, row, STREAM)
    top = tl.load(top_ptr + row * K + draw)
    total = tl.load(total_ptr + row * K + draw)
    return tl.where(allowed, tl.exp((perturbed - top) * inv_tau), 0.0) / total


@triton.jit
def _row_block(L, BLOCK_L: tl.constexpr):
    """This program's row and block items (grid: rows x blocks per row, flattened), with the mask."""
    blocks = tl.cdiv(L, BLOCK_L)
    row = (tl.program_id(0) // blocks).to(tl.int64)
    items = (tl.program_id(0) % blocks) * BLOCK_L + tl.arange(0, BLOCK_L)
    return row, items, items < L


@triton.jit
def _write_kernel(logits_ptr, top_ptr, total_ptr, pick_ptr, out_ptr, seed, inv_tau_ptr, L, K, HARD: tl.constexpr,
                  REPLACEMENT: tl.constexpr, BLOCK_L: tl.constexpr):
    row, items, mask = _row_block(L, BLOCK_L)
    inv_tau = tl.load(inv_tau_ptr)
    allowed = mask
    for draw in range(0, K):
        pick = tl.load(pick_ptr + row * K + draw)
        if HARD:
            value = (items == pick).to(tl.float64)
        else:
            value = _soft_block(logits_ptr, top_ptr, total_ptr, seed, row, draw, items, mask, allowed, inv_tau, L, K)
        tl.store(out_ptr + (row * K + draw) * L + items, value, mask=mask)
        if not REPLACEMENT:
            allowed = allowed & (items != pick)


@triton.jit
def _grad_kernel(logits_ptr, grad_ptr, top_ptr, total_ptr, dot_ptr, pick_ptr, out_ptr, seed, inv_tau_ptr, L, K,
                 REPLACEMENT: tl.constexpr, BLOCK_L: tl.constexpr):
    row, items, mask = _row_block(L, BLOCK_L)
    inv_tau = tl.load(inv_tau_ptr)
    allowed = mask
    acc = tl.zeros((BLOCK_L,), tl.float64)
    for draw in range(0, K):
        soft = _soft_block(logits_ptr, top_ptr, total_ptr, seed, row, draw, items, mask, allowed, inv_tau, L, K)
        g = tl.load(grad_ptr + (row * K + draw) * L + items, mask=mask, other=0.0).to(tl.float64)
        acc += soft * (g - tl.load(dot_ptr + row * K + draw)) * inv_tau
        if not REPLACEMENT:
            allowed = allowed & (items != tl.load(pick_ptr + row * K + draw))
    tl.store(out_ptr + row * L + items, acc, mask=mask)


def _launch(length: int, device) -> configs.Launch:
    """The block walked along a row: the GPU table entry for the row length (the largest entry for
    longer rows, which are looped over), the interpreter's small block otherwise."""
    return configs.launch("gumbel_topk", configs.next_power_of_2(length), device)


def _draw_stats(logits, grad, k, replacement, seed, inv_tau, soft):
    """Per (row, draw): maximum, softmax denominator, gradient dot (backward) and pick."""
    batch, length = logits.shape
    new = lambda dtype: torch.empty(batch, k, dtype=dtype, device=logits.device)  # noqa: E731
    top, total, dot, pick = new(torch.float64), new(torch.float64), new(torch.float64), new(torch.int64)
    taken = torch.zeros(batch, length if not replacement else 1, dtype=torch.int8, device=logits.device)
    config = _launch(length, logits.device)
    _stats_kernel[(batch,)](logits, grad if grad is not None else logits, taken, top, total, dot, pick, seed, inv_tau,
                            length, k, SOFT=soft, GRAD=grad is not None, REPLACEMENT=replacement, **config.kwargs())
    return top, total, dot, pick, config


def gumbel_topk(logits: torch.Tensor, k: int, tau: float, hard: bool, replacement: bool, seed: int) -> torch.Tensor:
    """(B, L) -> (B, k, L) one-hot or soft draws in logits' dtype."""
    logits = logits.contiguous()
    batch, length = logits.shape
    out = torch.empty(batch, k, length, dtype=torch.float64, device=logits.device)
    inv_tau = configs.scalar(1.0 / tau, torch.float64, logits.device)
    if out.numel():
        top, total, _, pick, config = _draw_stats(logits, None, k, replacement, seed, inv_tau, soft=not hard)
        grid = (batch * triton.cdiv(length, config["BLOCK_L"]),)
        _write_kernel[grid](logits, top, total, pick, out, seed, inv_tau, length, k, HARD=hard,
                            REPLACEMENT=replacement, **config.kwargs())
    return out.to(logits.dtype)


def gumbel_topk_backward(grad: torch.Tensor, logits: torch.Tensor, k: int, tau: float, replacement: bool,
                         seed: int) -> torch.Tensor:
    """(B, k, L) grad -> (B, L): gradient of the soft draws."""
    logits, grad = logits.contiguous(), grad.contiguous()
    batch, length = logits.shape
    out = torch.zeros(batch, length, dtype=torch.float64, device=logits.device)
    inv_tau = configs.scalar(1.0 / tau, torch.float64, logits.device)
    if out.numel():
        top, total, dot, pick, config = _draw_stats(logits, grad, k, replacement, seed, inv_tau, soft=True)
        grid = (batch * triton.cdiv(length, config["BLOCK_L"]),)
        _grad_kernel[grid](logits, grad, top, total, dot, pick, out, seed, inv_tau, length, k,
                           REPLACEMENT=replacement, **config.kwargs())
    return out.to(logits.dtype)


def aot_specs():
    """GPU launches: every logits dtype and table entry; the statistics pass in its forward-hard,
    forward-soft and backward forms, the write and gradient passes, with and without replacement."""
    specs = []
    types = lambda fn: {arg: kind for arg, kind in stats.items() if arg in fn.arg_names}  # noqa: E731
    stats = dict(seed="i64", inv_tau_ptr="*fp64", taken_ptr="*i8", top_ptr="*fp64", total_ptr="*fp64",
                 dot_ptr="*fp64", pick_ptr="*i64", out_ptr="*fp64")
    for block, config in configs.GPU["gumbel_topk"].items():
        for dtype in configs.DTYPES:
            name = configs.TL_NAMES[dtype]
            for replacement in (False, True):
                label = "replacement" if replacement else "no replacement"
                for soft, grad, what in ((False, False, "hard"), (True, False, "soft"), (True, True, "grad")):
                    specs.append(configs.AotSpec(
                        _stats_kernel, "gumbel_topk", name, config,
                        dict(config.blocks, SOFT=soft, GRAD=grad, REPLACEMENT=replacement),
                        types=types(_stats_kernel), data=name, variant=f"{label} {what}"))
                for hard in (False, True):
                    specs.append(configs.AotSpec(
                        _write_kernel, "gumbel_topk", name, config,
                        dict(config.blocks, HARD=hard, REPLACEMENT=replacement), types=types(_write_kernel),
                        data=name, variant=label + (" hard" if hard else "")))
                specs.append(configs.AotSpec(
                    _grad_kernel, "gumbel_topk", name, config, dict(config.blocks, REPLACEMENT=replacement),
                    types=types(_grad_kernel), data=name, variant=label))
    return specs
