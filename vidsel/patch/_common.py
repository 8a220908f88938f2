"""Machinery shared by the patches: the handle, module replacement, attention with a size bias.

Patching never swaps ``__class__`` and never overwrites a ``forward``: a patched block is a new
module that holds the *same* submodule objects under the *same* names as the block it replaces
(so ``state_dict()`` keys, parameters and their gradients are shared), or a forward pre-hook.
`PatchHandle.remove()` puts the original objects back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PatchHandle:
    """What a patch changed, and how to undo it.

    patched   number of blocks whose computation the patch changed
    state     the per-forward record of the patched blocks (see each patch's docstring)
    schedule  token counts after every block predicted by the method's formula for the model's
              configured input (what ``state.tokens_per_block`` records after a forward)
    remove() restores the original modules / removes the hooks; the model is then exactly the
             unpatched one (same objects, same state_dict, bitwise-equal outputs).
    """

    def __init__(self, model: nn.Module, method: str, state, undo: list[Callable[[], None]], patched: int,
                 schedule: list | None = None):
        self.model, self.method, self.state, self.schedule = model, method, state, schedule
        self._undo, self.patched = undo, patched
        model._vidsel_patch = self  # lets a second patch refuse clearly instead of patching a patch

    @property
    def active(self) -> bool:
        return bool(self._undo)

    def remove(self) -> None:
        """Restores the unpatched model; calling it twice is a no-op."""
        while self._undo:
            self._undo.pop()()
        if getattr(self.model, "_vidsel_patch", None) is self:
            del self.model._vidsel_patch

    def __enter__(self) -> "PatchHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        status = "active" if self.active else "removed"
        return f"PatchHandle({self.method}, model={type(self.model).__name__}, patched={self.patched}, {status})"


def refuse_repatch(model: nn.Module) -> None:
    previous = getattr(model, "_vidsel_patch", None)
    if previous is not None and previous.active:
        raise ValueError(f"{type(model).__name__} is already patched ({previous!r}); call .remove() on that handle first")


def unsupported(method: str, model: nn.Module, supported: Sequence[str]) -> TypeError:
    return TypeError(
        f"vidsel.patch.{method}: no supported backbone in {type(model).__name__} "
        f"(supported: {', '.join(supported)}; a model that contains one of them works too)"
    )


def find_backbone(model: nn.Module, classes: Sequence[type]) -> nn.Module | None:
    """`model` itself or its first submodule that is an instance of one of `classes`."""
    for module in model.modules():
        if isinstance(module, tuple(classes)):
            return module
    return None


def replace_items(container: nn.Module, make: Callable[[int, nn.Module], nn.Module]) -> list[Callable[[], None]]:
    """Replaces every child of an nn.ModuleList / nn.Sequential by make(index, child); returns undo functions."""
    undo = []
    for index, original in enumerate(list(container)):
        container[index] = make(index, original)
        undo.append(lambda index=index, original=original: container.__setitem__(index, original))
    return undo


def adopt_children(wrapper: nn.Module, original: nn.Module) -> None:
    """Registers every child of `original` on `wrapper` under its name (same objects, same keys)."""
    for name, child in original.named_children():
        wrapper.add_module(name, child)


def check_r(name: str, r, depth: int) -> list[int]:
    """An int (same for every block) or one int per block -> list of `depth` non-negative ints."""
    values = list(r) if isinstance(r, (list, tuple)) else [r] * depth
    if len(values) != depth:
        raise ValueError(f"{name} must be an int or a sequence of {depth} ints (one per block), got {len(values)}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int (or a sequence of them), got {r!r}")
    return values


def size_bias(size: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Proportional attention (ToMe): + log(size_j) on every logit of key j, as an SDPA mask (B, 1, 1, N)."""
    return None if size is None else size.log().to(dtype)[:, None, None, :]


def attend(q: Tensor, k: Tensor, v: Tensor, size: Tensor | None, dropout_p: float = 0.0,
           need_importance: bool = False, explicit: bool = False) -> tuple[Tensor, Tensor | None]:
    """Multi-head attention with the proportional-attention key bias.

    q, k, v (B, H, N, C); size (B, N) or None. Returns out (B, N, H·C) and, with need_importance,
    TESTA's eq. 1 importance (B, N): attention each token receives from the others, mean over heads.
    By default SDPA runs with the bias as its mask (no N² softmax here); ``explicit`` (or the
    importance, which needs the probabilities) computes softmax(q·kᵀ/√C + bias)·v step by step, as
    a library whose own attention is written that way does (bitwise the same when nothing merges).
    """
    batch, heads, n, channels = q.shape
    bias = size_bias(size, q.dtype)
    importance = None
    if explicit or need_importance:
        logits = (q @ k.transpose(-2, -1)) * channels**-0.5
        if bias is not None:
            logits = logits + bias
        probs = logits.softmax(dim=-1)
        if need_importance:
            importance = (probs.sum(dim=-2) - probs.diagonal(dim1=-2, dim2=-1)).mean(dim=1)
        out = (F.dropout(probs, dropout_p) if dropout_p else probs) @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
    return out.transpose(1, 2).reshape(batch, n, heads * channels), importance


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, N, H·C) -> (B, H, N, C)."""
    batch, n, width = x.shape
    return x.reshape(batch, n, heads, width // heads).transpose(1, 2)


def dropout_p(module: nn.Module, p: float) -> float:
    return p if module.training else 0.0

