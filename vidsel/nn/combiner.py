"""Mirasol3B's Combiners (§3.2): fuse the time-aligned audio/video features u_t of each chunk into
m combined features x_t, causally (eq. 2: x_t = Combiner(u_1, ..., u_t)).

* `TransformerCombiner`: R pre-norm blocks over the concatenated u_1..u_T with the block-causal chunk
  mask of eq. 8 (`vidsel.ops.chunk_causal_attention`, never a dense mask), then m features per chunk
  are selected (Fig. 4 left). Streaming `step` keeps one ChunkCache per block; its cost grows with t.
* `TTMCombiner`: a Token Turing Machine (eq. 3-6): Read / Write / Output are TokenLearners, Process is
  a small Transformer; the memory M_t replaces the history, so every step costs the same.

Both share the streaming protocol `state = init_state(batch_size)`, `x_t, state = step(u_t, state)`
and give, step by step, the same x as `forward(u)` over the whole sequence.

Shapes: B batch, T chunks, n features per chunk, m combined features per chunk, d width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vidsel.nn.chunk_attention import ChunkCache, ChunkCausalSelfAttention


class Mlp(nn.Module):
    """Linear -> GELU -> Linear, the Transformer feed-forward."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ChunkCausalBlock(nn.Module):
    """Pre-norm Transformer block whose self-attention is block-causal over time chunks (eq. 8).

    forward(x (B, L, d), chunk_lens=None, key_bias=None) -> (B, L, d): chunks of `chunk_size` tokens unless
    chunk_lens is given; one chunk of length L is full attention, chunk_size=1 causal attention;
    key_bias (B, L) is added to every attention score column (e.g. a large negative value hides a token).
    step(x_chunk (B, n, d), cache) -> ((B, n, d), cache): one more chunk against the cached ones.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, chunk_size: int = 1, impl: str = "auto"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ChunkCausalSelfAttention(dim, heads, chunk_size, impl=impl)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, chunk_lens: Sequence[int] | None = None, key_bias: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), chunk_lens, key_bias)
        return x + self.mlp(self.norm2(x))

    def step(self, x_chunk: Tensor, cache: ChunkCache | None = None) -> tuple[Tensor, ChunkCache]:
        attended, cache = self.attn.step(self.norm1(x_chunk), cache)
        x_chunk = x_chunk + attended
        return x_chunk + self.mlp(self.norm2(x_chunk)), cache


class TokenLearner(nn.Module):
    """TokenLearner (Ryoo et al., 2021; the v1.1 form TTM uses): S learned weighted averages of N tokens.

    forward(x (B, N, d)) -> (B, S, d): weights = softmax over N of MLP(LayerNorm(x)) (B, N, S), and
    output_s = sum_i weights[i, s] * x_i. Any N works, so the same module reads memory + inputs.
    """

    def __init__(self, dim: int, num_tokens: int, hidden: int | None = None):
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        self.num_tokens = num_tokens
        self.norm = nn.LayerNorm(dim)
        self.score = Mlp(dim, hidden or dim, num_tokens)

    def scores(self, x: Tensor) -> Tensor:
        """Selection logits (..., N, S) of tokens x (..., N, d); each token's row depends on it alone, so
        logits of tokens known in advance can be computed in one batch."""
        return self.score(self.norm(x))

    def pool(self, x: Tensor, scores: Tensor) -> Tensor:
        """x (B, N, d) with their logits (B, N, S) -> (B, S, d): softmax over the N tokens, weighted sums."""
        return scores.softmax(dim=1).transpose(1, 2) @ x

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ValueError(f"x must have shape (B, N, d), got {tuple(x.shape)}")
        return self.pool(x, self.scores(x))


def _check_features(u: Tensor, dim: int, ndim: int, layout: str) -> None:
    if u.dim() != ndim or u.shape[-1] != dim or u.shape[-2] == 0:
        raise ValueError(f"u must have shape {layout} with d={dim} and n > 0, got {tuple(u.shape)}")


class TransformerCombiner(nn.Module):
    """Causal Transformer Combiner (§3.2): R block-causal layers over all features, m kept per chunk.

    Args:
        dim: feature width d.
        depth: R, the number of layers (the paper: 8).
        heads: attention heads.
        num_outputs: m, combined features per chunk (the paper: 32).
        selection: how the m features of chunk t are chosen from its n layer outputs (Fig. 4
            "feature selection"): "learned" = a TokenLearner over the chunk's own outputs (m soft
            selections), "last" = its last m outputs (needs n >= m).
        mlp_ratio, impl: MLP width factor and backend of the attention op.

    forward(u (B, T, n, d)) -> x (B, T, m, d); x_t depends on u_1..u_t only (eq. 2).
    """

    def __init__(self, dim: int, depth: int, heads: int, num_outputs: int, *, selection: str = "learned",
                 mlp_ratio: float = 4.0, impl: str = "auto"):
        super().__init__()
        if selection not in ("learned", "last"):
            raise ValueError(f"selection must be 'learned' or 'last', got {selection!r}")
        self.dim, self.num_outputs, self.selection = dim, num_outputs, selection
        self.blocks = nn.ModuleList(ChunkCausalBlock(dim, heads, mlp_ratio, impl=impl) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.select = TokenLearner(dim, num_outputs) if selection == "learned" else None

    def _select(self, y: Tensor) -> Tensor:
        """(B', n, d) outputs of single chunks -> (B', m, d)."""
        if self.select is not None:
            return self.select(y)
        if y.shape[1] < self.num_outputs:
            raise ValueError(f"selection='last' needs n >= m={self.num_outputs} features per chunk, got {y.shape[1]}")
        return y[:, -self.num_outputs:]

    def forward(self, u: Tensor) -> Tensor:
        _check_features(u, self.dim, 4, "(B, T, n, d)")
        batch, chunks, n, dim = u.shape
        y = u.reshape(batch, chunks * n, dim)
        for block in self.blocks:
            y = block(y, [n] * chunks)
        y = self.norm(y).reshape(batch * chunks, n, dim)
        return self._select(y).reshape(batch, chunks, self.num_outputs, dim)

    def init_state(self, batch_size: int) -> list[ChunkCache | None]:
        """Streaming state: one (empty) key/value cache per layer."""
        return [None] * len(self.blocks)

    def step(self, u_t: Tensor, state: list[ChunkCache | None]) -> tuple[Tensor, list[ChunkCache]]:
        """u_t (B, n, d) -> x_t (B, m, d) and the caches extended by chunk t."""
        _check_features(u_t, self.dim, 3, "(B, n, d)")
        y, caches = u_t, []
        for block, cache in zip(self.blocks, state):
            y, cache = block.step(y, cache)
            caches.append(cache)
        return self._select(self.norm(y)), caches


class TTMCombiner(nn.Module):
    """Token Turing Machine Combiner (§3.2, eq. 3-6), constant cost per chunk.

        z_t = Read(u_t, M_t)          TokenLearner over [M_t; u_t] -> r tokens       (3)
        o_t = Process(z_t)            R Transformer layers over the r tokens         (4)
        M_{t+1} = Write(M_t, o_t, u_t) TokenLearner over [M_t; o_t; u_t] -> s tokens (5)
        x_t = Output(o_t)             TokenLearner over o_t -> m tokens              (6)

    Learned type embeddings tell memory, processed and input tokens apart before Read and Write
    (a TokenLearner is otherwise blind to where a token came from). M_1 is a learned (s, d) table.

    Args:
        dim: feature width d.  depth: R, layers of Process.  heads: attention heads.
        num_outputs: m.  memory_tokens: s, the memory size.  read_tokens: r, tokens Process sees.
        mlp_ratio, impl: MLP width factor and backend of the attention op.

    forward(u (B, T, n, d)) -> x (B, T, m, d), looping eq. 3-6 over the chunks.
    """

    def __init__(self, dim: int, depth: int, heads: int, num_outputs: int, *, memory_tokens: int = 32,
                 read_tokens: int = 32, mlp_ratio: float = 4.0, impl: str = "auto"):
        super().__init__()
        self.dim, self.num_outputs, self.memory_tokens = dim, num_outputs, memory_tokens
        self.initial_memory = nn.Parameter(torch.zeros(memory_tokens, dim))
        self.type_embed = nn.Parameter(torch.zeros(3, dim))  # memory, processed, input
        nn.init.trunc_normal_(self.initial_memory, std=0.02)
        nn.init.trunc_normal_(self.type_embed, std=0.02)
        self.read = TokenLearner(dim, read_tokens)
        self.process = nn.ModuleList(ChunkCausalBlock(dim, heads, mlp_ratio, impl=impl) for _ in range(depth))
        self.process_norm = nn.LayerNorm(dim)
        self.write = TokenLearner(dim, memory_tokens)
        self.output = TokenLearner(dim, num_outputs)

    def init_state(self, batch_size: int) -> Tensor:
        """M_1: (B, s, d), the learned initial memory."""
        return self.initial_memory.expand(batch_size, -1, -1)

    def step(self, u_t: Tensor, memory: Tensor, input_scores: tuple[Tensor, Tensor] | None = None
             ) -> tuple[Tensor, Tensor]:
        """One application of eq. 3-6: u_t (B, n, d), M_t (B, s, d) -> x_t (B, m, d), M_{t+1} (B, s, d).
        input_scores: u_t's Read and Write logits when precomputed (`forward` does so for all chunks)."""
        _check_features(u_t, self.dim, 3, "(B, n, d)")
        mem_t, out_t, in_t = self.type_embed.unbind(0)
        memory_in, inputs = memory + mem_t, u_t + in_t
        read_u, write_u = input_scores if input_scores is not None else self._input_scores(inputs)
        z = self.read.pool(torch.cat([memory_in, inputs], dim=1),
                           torch.cat([self.read.scores(memory_in), read_u], dim=1))
        for block in self.process:
            z = block(z, [z.shape[1]])
        o = self.process_norm(z)
        written = torch.cat([memory_in, o + out_t], dim=1)
        new_memory = self.write.pool(torch.cat([written, inputs], dim=1),
                                     torch.cat([self.write.scores(written), write_u], dim=1))
        return self.output(o), new_memory

    def _input_scores(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        return self.read.scores(inputs), self.write.scores(inputs)

    def forward(self, u: Tensor) -> Tensor:
        _check_features(u, self.dim, 4, "(B, T, n, d)")
        inputs = u + self.type_embed[2]
        read_u, write_u = self._input_scores(inputs)  # every chunk's input logits in one batch
        memory, outputs = self.init_state(u.shape[0]), []
        for t, u_t in enumerate(u.unbind(1)):
            x_t, memory = self.step(u_t, memory, (read_u[:, t], write_u[:, t]))
            outputs.append(x_t)
        return torch.stack(outputs, dim=1)
