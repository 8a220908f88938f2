"""ChunkCausalSelfAttention: multi-head self-attention with Mirasol3B's block-causal chunk mask (§3.3.1).

Training runs the whole sequence at once (`forward`); streaming feeds one time chunk at a time
(`step`), attending to the cached keys/values of earlier chunks. Since a chunk sees exactly the chunks
up to itself (eq. 8), both give the same outputs (Mirasol3B §3.4: "naturally applicable to streaming").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vidsel.ops.chunk_attention import chunk_causal_attention


@dataclass
class ChunkCache:
    """Keys and values (B, H, L_seen, Dh) of the chunks streamed so far, and their lengths."""

    k: Tensor | None = None
    v: Tensor | None = None
    chunk_lens: list[int] = field(default_factory=list)

    @property
    def length(self) -> int:
        return sum(self.chunk_lens)


class ChunkCausalSelfAttention(nn.Module):
    """qkv projection -> block-causal chunk attention -> output projection.

    Args:
        dim: model width (divisible by heads).
        heads: attention heads.
        chunk_size: tokens per time chunk in `forward` (the last chunk may be shorter).
        bias: biases of the projections.
        impl: backend of the attention op ("auto" | "reference" | "cpu" | "triton" | "cuda").
    """

    def __init__(self, dim: int, heads: int, chunk_size: int, *, bias: bool = True, impl: str = "auto"):
        super().__init__()
        for name, value in (("dim", dim), ("heads", heads), ("chunk_size", chunk_size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if dim % heads != 0:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.dim, self.heads, self.chunk_size, self.impl = dim, heads, chunk_size, impl
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch, length, _ = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.heads, self.dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, Dh)
        return q, k, v

    def _merge_heads(self, out: Tensor) -> Tensor:
        batch, heads, length, head_dim = out.shape
        return self.proj(out.transpose(1, 2).reshape(batch, length, heads * head_dim))

    def forward(self, x: Tensor, chunk_lens: Sequence[int] | None = None, key_bias: Tensor | None = None) -> Tensor:
        """x (B, L, dim) -> (B, L, dim). chunk_lens overrides the equal chunks of chunk_size;
        key_bias (B, L), e.g. log token sizes after merging, is added to every score column."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (B, L, {self.dim}), got {tuple(x.shape)}")
        q, k, v = self._project(x)
        chunking = dict(chunk_lens=chunk_lens) if chunk_lens is not None else dict(chunk_size=self.chunk_size)
        out = chunk_causal_attention(q, k, v, key_bias=key_bias, impl=self.impl, **chunking)
        return self._merge_heads(out)

    def step(self, x_chunk: Tensor, cache: ChunkCache | None = None) -> tuple[Tensor, ChunkCache]:
        """Streams one time chunk: x_chunk (B, n, dim) -> (B, n, dim) and the cache extended by it.

        Its tokens attend to each other and to every cached chunk (eq. 8 restricted to the last chunk).
        """
        if x_chunk.dim() != 3 or x_chunk.shape[-1] != self.dim or x_chunk.shape[1] == 0:
            raise ValueError(f"x_chunk must have shape (B, n>0, {self.dim}), got {tuple(x_chunk.shape)}")
        cache = cache if cache is not None else ChunkCache()
        q, k, v = self._project(x_chunk)
        if cache.k is not None:
            k = torch.cat([cache.k, k], dim=2)
            v = torch.cat([cache.v, v], dim=2)
        chunk_lens = [*cache.chunk_lens, x_chunk.shape[1]]
        out = chunk_causal_attention(q, k, v, chunk_lens=chunk_lens, impl=self.impl)
        return self._merge_heads(out), ChunkCache(k, v, chunk_lens)
