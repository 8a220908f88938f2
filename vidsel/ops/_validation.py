"""Argument checks shared by the public ops: every message names the argument and what was expected.

Shape and dtype checks run in the Python wrappers (they are static under torch.compile); checks that
read tensor values (NaN, index ranges) run inside the custom ops, where they do not break graphs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(
    name: str,
    value,
    *,
    ndim: int | Sequence[int] | None = None,
    floating: bool = False,
    dtypes: Sequence[torch.dtype] | None = None,
    like: torch.Tensor | None = None,
    shape: Sequence[int | None] | None = None,
) -> torch.Tensor:
    """Raises TypeError/ValueError unless `value` is a tensor of the expected rank, dtype and shape.

    like: a tensor whose device the value must share. shape: expected sizes, None = any.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if value.dim() not in allowed:
            expected = " or ".join(str(d) for d in allowed)
            raise ValueError(f"{name} must have {expected} dimensions, got shape {tuple(value.shape)}")
    if floating and value.dtype not in FLOATING:
        raise TypeError(f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), got {value.dtype}")
    if dtypes is not None and value.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {value.dtype}")
    if like is not None and value.device != like.device:
        raise ValueError(f"{name} is on {value.device} but the other inputs are on {like.device}")
    if shape is not None:
        if value.dim() != len(shape) or any(e is not None and e != s for e, s in zip(shape, value.shape)):
            expected = "(" + ", ".join("*" if e is None else str(e) for e in shape) + ")"
            raise ValueError(f"{name} must have shape {expected}, got {tuple(value.shape)}")
    return value


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """Raises unless `value` is an int (not bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name}={value} must be in [{lo}, {hi}]")
    return value


def is_finite(value) -> bool:
    """math.isfinite by comparisons, so it also traces on a symbolic float under torch.compile."""
    return value == value and -math.inf < value < math.inf


def check_seed(seed, draw) -> int:
    """An explicit seed, or draw() for seed=None, which reads torch's generator and so cannot trace."""
    if seed is None:
        if torch.compiler.is_compiling():
            raise ValueError("seed=None draws from torch's generator, which cannot run under torch.compile; "
                             "pass an explicit int seed (e.g. seed=step) to the compiled call")
        return draw()
    return seed


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_finite(name: str, value: torch.Tensor) -> None:
    """Raises ValueError when `value` holds NaN/inf. Reads the data: call inside custom ops only."""
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def refuse_double_backward(backward_op, name: str) -> None:
    """Gives a backward custom op an autograd formula that raises a RuntimeError naming the op, so a
    gradient of the gradient fails clearly instead of with PyTorch's generic "no autograd formula"."""

    def _refuse(ctx, *grads):
        raise RuntimeError(f"{name}: double backward (a gradient of its gradient) is not supported")

    backward_op.register_autograd(_refuse)
