"""MIST's question-conditioned cascade selection as layers (MIST §3.2 eq. 2–5, Appendix A).

`SegmentSelector` (eq. 2–3) picks the Top_k segments of a video whose features match the question;
`RegionSelector` (eq. 4–5) picks the Top_j patches of every selected frame. Both are plain
nn.Modules usable in any QA model::

    seg = SegmentSelector(512, k=2)                      # g_q, g_s
    reg = RegionSelector(512, j=12)                      # h_q, h_x
    x_t, seg_index = seg(patches, segments, question)    # (B, 2, T, N, D), (B, 2)
    x_st, reg_index = reg(x_t.flatten(1, 2), question)   # (B, 2T, 12, D), (B, 2T, 12)

Selectors (the `selector` argument):
  * "gumbel" (MIST default): while training, k Gumbel-softmax draws *with replacement* from
    softmax(QKᵀ/√d), hard one-hot rows with the soft rows' gradient (straight-through), via
    `vidsel.ops.gumbel_topk_select`; the Philox noise is keyed by a seed drawn from torch's default
    generator, so `torch.manual_seed` makes training repeatable.
  * "gumbel_no_replacement" (Appendix A, "G-S w/o. Replacement"): the same, each draw masking the
    items drawn before it.
  * "attention" (Appendix A, "Non-params. Attention"): no parameters, hard top-k of the cosine
    similarity between the (pre-trained) features and the question, in training and eval alike.
In eval every selector is the deterministic hard top-k of the scores (`vidsel.ops.topk_gather`,
highest score first): no noise, same input -> same indices.

The scores handed to the ops are the logits QKᵀ/√d themselves: softmax(QKᵀ/√d) is the distribution
the draws sample from, and top-k of the logits equals top-k of the probabilities.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidsel import ops

__all__ = ["SELECTORS", "SegmentSelector", "RegionSelector", "select_topk"]

SELECTORS = ("gumbel", "gumbel_no_replacement", "attention")
_SEED_RANGE = 2**62  # within the ops' Philox seed range [0, 2**63 - 1]


def select_topk(
    x: Tensor, scores: Tensor, k: int, *, selector: str, training: bool, tau: float = 1.0, impl: str = "auto"
) -> tuple[Tensor, Tensor]:
    """The k selected rows of every group: x (G, L, F), scores (G, L) -> (G, k, F), index (G, k).

    Training with a Gumbel selector: `ops.gumbel_topk_select` (straight-through, gradients reach
    x and scores); the indices are the argmax of the same draws (`ops.gumbel_topk`, same seed).
    Otherwise (eval, or selector="attention"): `ops.topk_gather`, highest score first.
    """
    if training and selector != "attention":
        replacement = selector == "gumbel"
        seed = int(torch.randint(0, _SEED_RANGE, (), dtype=torch.int64).item())
        selected = ops.gumbel_topk_select(x, scores, k, tau=tau, replacement=replacement, seed=seed, impl=impl)
        with torch.no_grad():
            draws = ops.gumbel_topk(scores.detach(), k, tau=tau, replacement=replacement, seed=seed, impl=impl)
        return selected, draws.argmax(dim=-1)
    return ops.topk_gather(x, scores, k, sorted_by_index=False, impl=impl)


def _check_selector(selector: str, tau: float) -> None:
    if selector not in SELECTORS:
        raise ValueError(f"selector must be one of {SELECTORS}, got {selector!r}")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a finite float > 0, got {tau!r}")


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _check_shape(name: str, value: Tensor, ndim: int, dim: int, layout: str) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(value).__name__}")
    if value.dim() != ndim or value.shape[-1] != dim:
        raise ValueError(f"{name} must have shape {layout} with D={dim}, got {tuple(value.shape)}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")


def _cosine_scores(keys: Tensor, question: Tensor) -> Tensor:
    """Non-parametric matching score: normalised keys (..., L, D) · normalised question (..., D)."""
    return torch.einsum("...ld,...d->...l", F.normalize(keys, dim=-1), F.normalize(question, dim=-1))


class SegmentSelector(nn.Module):
    """Eq. 2–3: Q = g_q(q), K = g_s(S), V = X; X_t = selector_Topk(softmax(QKᵀ/√d), V).

    Args:
        dim: D, the feature size of segments, question and patches.
        k: Top_k, segments selected per video (k <= K; the eval top-k picks distinct segments).
        selector: "gumbel" | "gumbel_no_replacement" | "attention" (see the module docstring).
        tau: Gumbel-softmax temperature while training.
        impl: backend of the vidsel ops.

    forward(patches (B, K, T, N, D), segments (B, K, D), question (B, D)) ->
        selected (B, k, T, N, D) patch features of the chosen segments, index (B, k) int64 in [0, K)
        (training: draw order; eval: highest score first).
    """

    def __init__(self, dim: int, k: int, *, selector: str = "gumbel", tau: float = 1.0, impl: str = "auto"):
        super().__init__()
        _check_count("dim", dim)
        _check_count("k", k)
        _check_selector(selector, tau)
        self.dim, self.k, self.selector, self.tau, self.impl = dim, k, selector, float(tau), impl
        if selector != "attention":
            self.g_q = nn.Linear(dim, dim)
            self.g_s = nn.Linear(dim, dim)

    def scores(self, segments: Tensor, question: Tensor) -> Tensor:
        """(B, K, D), (B, D) -> (B, K): QKᵀ/√d (the logits of eq. 3's softmax), or cosine for "attention"."""
        if self.selector == "attention":
            return _cosine_scores(segments, question)
        query, keys = self.g_q(question), self.g_s(segments)
        return torch.einsum("bd,bkd->bk", query, keys) / math.sqrt(self.dim)

    def forward(self, patches: Tensor, segments: Tensor, question: Tensor) -> tuple[Tensor, Tensor]:
        _check_shape("patches", patches, 5, self.dim, "(B, K, T, N, D)")
        batch, num_segments = patches.shape[:2]
        _check_shape("segments", segments, 3, self.dim, "(B, K, D)")
        _check_shape("question", question, 2, self.dim, "(B, D)")
        if tuple(segments.shape[:2]) != (batch, num_segments) or question.shape[0] != batch:
            raise ValueError(
                f"segments must be (B, K, D) = ({batch}, {num_segments}, {self.dim}) and question (B, D) to match "
                f"patches {tuple(patches.shape)}; got {tuple(segments.shape)} and {tuple(question.shape)}"
            )
        if self.k > num_segments:
            raise ValueError(f"k={self.k} must be <= the number of segments K={num_segments}")
        scores = self.scores(segments, question).to(patches.dtype)
        flat = patches.reshape(batch, num_segments, -1)
        selected, index = select_topk(
            flat, scores, self.k, selector=self.selector, training=self.training, tau=self.tau, impl=self.impl
        )
        return selected.reshape(batch, self.k, *patches.shape[2:]), index

    def extra_repr(self) -> str:
        return f"dim={self.dim}, k={self.k}, selector={self.selector!r}, tau={self.tau:g}"


class RegionSelector(nn.Module):
    """Eq. 4–5, per frame τ: Q = h_q(q), K = h_x(X_τ), V = X_τ; X'_τ = selector_Topj(softmax(QKᵀ/√d), V).

    Args:
        dim: D.
        j: Top_j, patches kept per frame (j <= N).
        selector, tau, impl: as SegmentSelector (the same train/eval rule).

    forward(frames (B, F, N, D), question (B, D)) -> selected (B, F, j, D), index (B, F, j) int64 in
    [0, N). F is any number of frames, e.g. Top_k·T selected ones.
    """

    def __init__(self, dim: int, j: int, *, selector: str = "gumbel", tau: float = 1.0, impl: str = "auto"):
        super().__init__()
        _check_count("dim", dim)
        _check_count("j", j)
        _check_selector(selector, tau)
        self.dim, self.j, self.selector, self.tau, self.impl = dim, j, selector, float(tau), impl
        if selector != "attention":
            self.h_q = nn.Linear(dim, dim)
            self.h_x = nn.Linear(dim, dim)

    def scores(self, frames: Tensor, question: Tensor) -> Tensor:
        """(B, F, N, D), (B, D) -> (B, F, N): QKᵀ/√d per frame, or cosine for "attention"."""
        if self.selector == "attention":
            return _cosine_scores(frames, question[:, None])
        query, keys = self.h_q(question), self.h_x(frames)
        return torch.einsum("bd,bfnd->bfn", query, keys) / math.sqrt(self.dim)

    def forward(self, frames: Tensor, question: Tensor) -> tuple[Tensor, Tensor]:
        _check_shape("frames", frames, 4, self.dim, "(B, F, N, D)")
        _check_shape("question", question, 2, self.dim, "(B, D)")
        batch, num_frames, num_patches, dim = frames.shape
        if question.shape[0] != batch:
            raise ValueError(f"question must have shape (B, D) = ({batch}, {dim}), got {tuple(question.shape)}")
        if self.j > num_patches:
            raise ValueError(f"j={self.j} must be <= the number of patches per frame N={num_patches}")
        scores = self.scores(frames, question).to(frames.dtype)
        selected, index = select_topk(
            frames.reshape(batch * num_frames, num_patches, dim), scores.reshape(batch * num_frames, num_patches),
            self.j, selector=self.selector, training=self.training, tau=self.tau, impl=self.impl,
        )
        return selected.reshape(batch, num_frames, self.j, dim), index.reshape(batch, num_frames, self.j)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, j={self.j}, selector={self.selector!r}, tau={self.tau:g}"
