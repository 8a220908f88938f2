"""STTS token selectors as layers (Wang et al., "Efficient Video Transformers with Spatial-Temporal
Token Selection", ECCV 2022, §3.2–3.3).

* `ScorerNetwork` — eq. 2–3: an input-conditioned importance score in [0, 1] for each of L tokens.
* `TemporalSelector` — §3.3 "Temporal selection": keeps the K best frames of a token grid (eq. 9,
  `vidsel.ops.frame_select`).
* `AnchorSpatialSelector` — §3.3 "Spatial selection": keeps, in every frame, the best square
  anchor of the score map (top-1 over the anchors, `vidsel.ops.anchor_select`).

Both selectors run the perturbed-maximum top-k (eq. 5–8) while training with σ > 0 and the hard
top-k (a gather) otherwise (§3.2); `sigma_at` is the linear decay of σ to 0 over training that
closes the gap between the two. `frames_kept` and `anchor_side` turn a keep ratio into a count.

Token grids are (B, T, H, W, C): B clips, T frames, an H×W grid of tokens per frame, C channels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vidsel import ops

__all__ = [
    "ScorerNetwork",
    "TemporalSelector",
    "AnchorSpatialSelector",
    "min_max_normalize",
    "frames_kept",
    "anchor_side",
    "sigma_at",
]


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5 + 1e-9))


def frames_kept(num_frames: int, ratio: float) -> int:
    """K = round(T·r), at least 1 and at most T (temporal selection, §3.3); halves round up."""
    return min(num_frames, max(1, _round_half_up(num_frames * ratio)))


def anchor_side(height: int, width: int, ratio: float) -> int:
    """a = round(sqrt(H·W·r)), the side of the square anchor, clamped to [1, min(H, W)] (§3.3)."""
    return min(height, width, max(1, _round_half_up(math.sqrt(height * width * ratio))))


def sigma_at(step: int, total: int, sigma0: float = 0.1) -> float:
    """σ of eq. 7 at training `step` of `total`: linear decay from sigma0 to 0 (§3.2, end).

    At σ = 0 the perturbed top-k equals the hard top-k used at inference (and the scorer receives
    no gradient), so decaying σ to zero removes the train/test gap. σ0 = 0.1 in the paper (Table 8).
    """
    if total <= 0:
        raise ValueError(f"total must be a positive number of steps, got {total}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if sigma0 < 0:
        raise ValueError(f"sigma0 must be >= 0, got {sigma0}")
    return float(sigma0) * max(0.0, 1.0 - step / total)


def min_max_normalize(scores: Tensor, eps: float = 1e-6) -> Tensor:
    """Eq. 3: (s' − min s') / (max s' − min s') over the last dimension; (B, L) -> (B, L) in [0, 1]."""
    low = scores.amin(dim=-1, keepdim=True)
    high = scores.amax(dim=-1, keepdim=True)
    return (scores - low) / (high - low + eps)


class ScorerNetwork(nn.Module):
    """Eq. 2–3: importance score of each of L tokens, input-conditioned and in [0, 1].

    f^l = GELU(FC(LN(q))) ∈ R^{L×C/2} (eq. 2); f^g = mean_i f^l_i; s' = FC([f^l_i, f^g]) ∈ R^L and
    s = minmax(s') (eq. 3). The input LayerNorm keeps the scores independent of the token scale
    where the selector is inserted (before block 0 the tokens are raw patch embeddings); it costs
    5 FLOPs per element.

    forward: tokens (B, L, C) -> scores (B, L).
    """

    def __init__(self, dim: int):
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        hidden = max(1, dim // 2)
        self.norm = nn.LayerNorm(dim)
        self.local = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.score = nn.Linear(2 * hidden, 1)

    def raw_scores(self, tokens: Tensor) -> Tensor:
        """s' of eq. 3 (before normalisation): (B, L, C) -> (B, L)."""
        if tokens.dim() != 3 or tokens.shape[-1] != self.norm.normalized_shape[0]:
            raise ValueError(
                f"tokens must have shape (B, L, {self.norm.normalized_shape[0]}), got {tuple(tokens.shape)}"
            )
        local = self.act(self.local(self.norm(tokens)))
        global_ = local.mean(dim=1, keepdim=True).expand_as(local)
        return self.score(torch.cat([local, global_], dim=-1)).squeeze(-1)

    def forward(self, tokens: Tensor) -> Tensor:
        return min_max_normalize(self.raw_scores(tokens))


class _TopKSelector(nn.Module):
    """What both selectors share: a scorer, σ of eq. 7, the number n of perturbed samples, the backend.

    Args:
        dim: channels C of the token grid.
        ratio: fraction of the frames (temporal) or of the H·W tokens (spatial) to keep, in (0, 1].
        num_samples: perturbations n averaged by the perturbed top-k (eq. 7) while training.
        sigma: σ of eq. 7; set it each step with `sigma_at`. σ = 0 trains with the hard top-k.
        impl: backend of the selection ops ("auto" | "reference" | "cpu" | "triton" | "cuda").
    """

    def __init__(self, dim: int, ratio: float, *, num_samples: int = 500, sigma: float = 0.1, impl: str = "auto"):
        super().__init__()
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        self.dim, self.ratio = dim, float(ratio)
        self.num_samples, self.sigma, self.impl = int(num_samples), float(sigma), impl
        self.scorer = ScorerNetwork(dim)

    def _mode_kwargs(self) -> dict:
        """Perturbed top-k while training with σ > 0, hard top-k otherwise (§3.2)."""
        if self.training and self.sigma > 0:
            return dict(mode="perturbed", num_samples=self.num_samples, sigma=self.sigma, impl=self.impl)
        return dict(mode="hard", impl=self.impl)

    def _check_grid(self, grid: Tensor) -> None:
        if grid.dim() != 5 or grid.shape[-1] != self.dim:
            raise ValueError(f"grid must have shape (B, T, H, W, {self.dim}), got {tuple(grid.shape)}")

    def extra_repr(self) -> str:
        return f"dim={self.dim}, ratio={self.ratio:g}, sigma={self.sigma:g}, num_samples={self.num_samples}"


class TemporalSelector(_TopKSelector):
    """Keeps K = round(T·r) frames of a token grid (§3.3, eq. 9).

    Frame tokens x^t = the spatial average of each frame's tokens are scored by the scorer network
    (eq. 2–3); the top-K indicator Y^t (hard, or Y_σ of eq. 7 while training) picks the frames:
    z̄ = Y^tᵀ x̄ (eq. 9). In eval the K best frames come out in temporal order.

    forward: grid (B, T, H, W, C) -> (B, K, H, W, C). Arguments: see `_TopKSelector`.
    """

    def num_kept(self, frames: int) -> int:
        """K for a grid of `frames` frames (`frames_kept`)."""
        return frames_kept(frames, self.ratio)

    def frame_scores(self, grid: Tensor) -> Tensor:
        """(B, T, H, W, C) -> (B, T): the scorer on frame tokens (spatial average of each frame)."""
        self._check_grid(grid)
        return self.scorer(grid.flatten(2, 3).mean(dim=2))

    def forward(self, grid: Tensor) -> Tensor:
        self._check_grid(grid)
        batch, frames, height, width, dim = grid.shape
        kept = self.num_kept(frames)
        tokens = grid.reshape(batch, frames, height * width, dim)
        out = ops.frame_select(tokens, self.frame_scores(grid), kept, **self._mode_kwargs())
        return out.reshape(batch, kept, height, width, dim)


class AnchorSpatialSelector(_TopKSelector):
    """Keeps one square anchor of side a = round(sqrt(H·W·r)) per frame (§3.3, anchor-based).

    Token scores s_m per frame (the scorer sees the frame's H·W tokens; its global feature is the
    frame mean), reshaped to the H×W score map s^s, averaged within every anchor of the grid
    (stride α, see `anchor_stride`) to the anchor scores s^a ∈ R^G, then the top-1 anchor.

    forward: grid (B, T, H, W, C) -> (B, T, a, a, C).
    Args: those of `_TopKSelector`, and `stride`: α, or None for the default of `anchor_stride`.
    """

    def __init__(self, dim: int, ratio: float, *, stride: int | None = None, **kwargs):
        super().__init__(dim, ratio, **kwargs)
        if stride is not None and (not isinstance(stride, int) or stride < 1):
            raise ValueError(f"stride must be a positive int or None, got {stride!r}")
        self.stride = stride

    def side(self, height: int, width: int) -> int:
        """The anchor side a on an H×W grid (`anchor_side`)."""
        return anchor_side(height, width, self.ratio)

    def anchor_stride(self, height: int, width: int) -> int:
        """α of §3.3: the configured stride, else max((min(H, W) − a) // 2, 1) — at most 3 anchor
        positions per axis, the default of the STTS implementation (a few anchors keep the perturbed
        top-1 and its windowed sum cheap)."""
        if self.stride is not None:
            return self.stride
        return max((min(height, width) - self.side(height, width)) // 2, 1)

    def token_scores(self, grid: Tensor) -> Tensor:
        """(B, T, H, W, C) -> (B, T, H, W) scores, min-max normalised within each frame."""
        self._check_grid(grid)
        batch, frames, height, width, dim = grid.shape
        scores = self.scorer(grid.reshape(batch * frames, height * width, dim))
        return scores.reshape(batch, frames, height, width)

    def forward(self, grid: Tensor) -> Tensor:
        self._check_grid(grid)
        height, width = grid.shape[2:4]
        side, stride = self.side(height, width), self.anchor_stride(height, width)
        return ops.anchor_select(grid, self.token_scores(grid), (side, side), (stride, stride), **self._mode_kwargs())
