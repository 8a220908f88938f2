"""`TokenMerging`: one bipartite merge step as a layer (TESTA §3.2.2 TAM/SAM, ToMe).

Wraps `vidsel.ops.bipartite_match` + `vidsel.ops.merge` with the clamp of r every user needs and
size tracking. The same layer merges patch tokens (x (B, N, D)) and whole frames (x (B, T, L, D),
metric (B, T, C): TESTA's Temporal Aggregation Module).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vidsel import ops
from vidsel.ops.token_merging import PARTITIONS


class TokenMerging(nn.Module):
    """Removes up to `r` tokens by merging each into its most similar partner.

    Args:
        r: tokens to remove per call; clamped to ``min(r, (N - protected) // 2)`` (the bipartite
            limit: at most half of the free tokens can merge), so N -> N - removed(N).
        partition: "alternate" (geometry-based, ToMe parity), "alternate_after_protected" (parity
            restarted after the protected tokens) or "importance" (TESTA eq. 1, needs `importance`).
        protected: leading tokens that never merge (e.g. CLS, or frame 0 in TESTA's TAM).
        impl: backend of the ops ("auto" | "reference" | "cpu" | "triton" | "cuda").
    """

    def __init__(self, r: int, *, partition: str = "alternate", protected: int = 0, impl: str = "auto"):
        super().__init__()
        if not isinstance(r, int) or r < 0:
            raise ValueError(f"r must be a non-negative int, got {r!r}")
        if partition not in PARTITIONS:
            raise ValueError(f"partition must be one of {tuple(PARTITIONS)}, got {partition!r}")
        self.r, self.partition, self.protected, self.impl = r, partition, protected, impl

    def removed(self, n: int) -> int:
        """How many of `n` tokens one call removes: min(r, (n - protected) // 2)."""
        return max(0, min(self.r, (n - self.protected) // 2))

    def forward(
        self, x: Tensor, metric: Tensor, size: Tensor | None = None, importance: Tensor | None = None
    ) -> tuple[Tensor, Tensor, ops.Matching | None]:
        """Merges tokens of x by the similarity of `metric`.

        Args:
            x: (B, N, D) tokens or (B, N, L, D) whole frames.
            metric: (B, N, C) similarity features (TESTA: attention keys, averaged over heads).
            size: (B, N) tokens each input token already stands for (None = ones).
            importance: (B, N) attention received (eq. 1), for partition="importance".

        Returns:
            x (B, N - k, ...), size (B, N - k) and the Matching (None when k = 0), k = removed(N).
        """
        n = metric.shape[1]
        k = self.removed(n)
        if size is None:
            size = torch.ones(x.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
        if k == 0:
            return x, size, None
        matching = ops.bipartite_match(
            metric,
            k,
            partition=self.partition,
            importance=importance if self.partition == "importance" else None,
            protected=self.protected,
            impl=self.impl,
        )
        merged, merged_size = ops.merge(x, matching, size, impl=self.impl)
        return merged, merged_size, matching

    def extra_repr(self) -> str:
        return f"r={self.r}, partition={self.partition!r}, protected={self.protected}"


def frames_with_cls(cls: Tensor, x: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The spatial attention's input of divided space-time attention: every frame's tokens after a copy of CLS.

    cls (B, 1, D), x (B, T, L, D), size (B, T, L) or None (token sizes of merged tokens; CLS counts 1).
    Returns tokens (B*T, 1 + L, D) and sizes (B*T, 1 + L) or None.
    """
    batch, frames, patches, dim = x.shape
    tokens = torch.cat([cls.expand(batch, frames, dim).reshape(batch * frames, 1, dim),
                        x.reshape(batch * frames, patches, dim)], dim=1)
    if size is None:
        return tokens, None
    cls_size = torch.ones(batch * frames, 1, dtype=size.dtype, device=size.device)
    return tokens, torch.cat([cls_size, size.reshape(batch * frames, patches)], dim=1)
