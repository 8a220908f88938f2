"""Token merging (TESTA §3.2.2, ToMe): `bipartite_match` decides which tokens merge where; `merge`,
`unmerge` and `merge_source` apply the resulting Matching ("merge them by averaging").

Spatial aggregation (SAM), patches of each frame as tokens::

    keys = attn_keys.mean(1)                        # (B*T, L, C) metric per patch
    m = vidsel.ops.bipartite_match(keys, r=R_S)     # per frame, alternate A/B partition
    x, size = vidsel.ops.merge(x, m, size)          # (B*T, L, D) -> (B*T, L-R_S, D)

Temporal aggregation (TAM), whole frames as tokens (TESTA §3.2.1: a frame token is the mean of
its patch tokens)::

    frame_metric = keys.view(B, T, L, C).mean(2)    # (B, T, C)
    m = vidsel.ops.bipartite_match(frame_metric, r=R_T)
    x, _ = vidsel.ops.merge(x, m)                   # x (B, T, L, D) -> (B, T-R_T, L, D)

`merge`, `unmerge` and `merge_source` reduce to two row primitives registered as custom ops:
    scatter_rows(x, dst, w, n_out)[b, j] = sum_{i: dst[b,i]=j} w[b,i] x[b,i]
    gather_rows(y, dst, w)[b, i]         = w[b,i] y[b, dst[b,i]]
Each is the adjoint of the other, so the backward of one is a call of the other.
"""

from __future__ import annotations

import math

from typing import NamedTuple, Optional

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from vidsel.ops._dispatch import PREFER_TRITON_ON_GPU, OpBackends, resolve, run_backend
from vidsel.ops._validation import check_choice, check_int, check_tensor
from vidsel.reference import token_merging as reference

PARTITIONS = {
    "alternate": reference.ALTERNATE,
    "importance": reference.IMPORTANCE,
    "alternate_after_protected": reference.ALTERNATE_AFTER_PROTECTED,
}


class Matching(NamedTuple):
    """Index tensors describing one merge step of N tokens into N - r.

    kept_index   (B, N - r) input position of every output token (surviving tokens, ascending)
    merged_index (B, r)     positions of the tokens merged away, ascending
    merged_into  (B, r)     position of the surviving token each of those joins
    dst_index    (B, N)     output slot of every input token
    """

    kept_index: Tensor
    merged_index: Tensor
    merged_into: Tensor
    dst_index: Tensor

    @property
    def num_input(self) -> int:
        return self.dst_index.shape[1]

    @property
    def num_output(self) -> int:
        return self.kept_index.shape[1]


def _partition_sizes(n: int, r: int, kind: int, protected: int) -> tuple[int, int]:
    if kind == reference.IMPORTANCE:
        return r, n - protected - r
    return reference.alternate_sizes(n, kind, protected)


def _bipartite_match_triton(metric, r, kind, importance, protected):
    """Triton fuses similarity + row max/argmax; the small (B, |A|) selection runs in PyTorch."""
    from vidsel.kernels.token_merging import best_partner

    batch, n, c = metric.shape
    a_pos, b_pos = reference.partition_positions(batch, n, r, kind, importance, protected, metric.device)
    if r == 0 or b_pos.shape[1] == 0:
        scores = torch.zeros(a_pos.shape, dtype=torch.float32, device=metric.device)
        partner = torch.zeros(a_pos.shape, dtype=torch.int64, device=metric.device)
    else:
        take = lambda pos: metric.gather(1, pos.unsqueeze(-1).expand(-1, -1, c))  # noqa: E731
        scores, partner = best_partner(take(a_pos), take(b_pos))
    return reference.matching_from_partners(n, r, kind, a_pos, b_pos, scores, partner)


BIPARTITE_MATCH = OpBackends("bipartite_match", reference=reference.bipartite_match, triton=_bipartite_match_triton,
                             **PREFER_TRITON_ON_GPU)
SCATTER_ROWS = OpBackends("scatter_rows", reference=reference.scatter_rows, triton="token_merging")
GATHER_ROWS = OpBackends("gather_rows", reference=reference.gather_rows, triton="token_merging")


@torch.library.custom_op("vidsel::bipartite_match", mutates_args=())
def _bipartite_match(
    metric: Tensor, r: int, partition: int, importance: Optional[Tensor], protected: int, impl: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(run_backend(BIPARTITE_MATCH, impl, metric, r, partition, importance, protected))


@_bipartite_match.register_fake
def _(metric, r, partition, importance, protected, impl):
    batch, n, _ = metric.shape
    new = lambda *shape: metric.new_empty(shape, dtype=torch.int64)  # noqa: E731
    return new(batch, n - r), new(batch, r), new(batch, r), new(batch, n)


@register_flop_formula(torch.ops.vidsel.bipartite_match)
def _bipartite_match_flops(metric_shape, r, partition, importance_shape, protected, impl, *args, **kwargs) -> int:
    """2 FLOPs per multiply-add of the A x B cosine-similarity products (the argmax/select is free)."""
    batch, n, c = metric_shape
    na, nb = _partition_sizes(n, r, partition, protected)
    return 0 if r == 0 else 2 * batch * na * nb * c


def bipartite_match(
    metric: Tensor,
    r: int,
    *,
    partition: str = "alternate",
    importance: Tensor | None = None,
    protected: int = 0,
    impl: str = "auto",
) -> Matching:
    """Bipartite soft matching of N tokens into N - r (TESTA §3.2.2; ToMe).

    Args:
        metric: (B, N, C) token features compared by cosine similarity (TESTA: attention keys).
        r: number of tokens to remove. alternate: 0 <= r <= (N - protected) // 2;
            importance: 0 <= r < N - protected (or r = 0).
        partition: "alternate" — A = even, B = odd positions (geometry-based, ToMe/TESTA-exact:
            a protected CLS is A's first slot, a second protected token B's first, both only
            excluded from matching); each A token finds its most similar B token and the r most
            similar pairs merge. "alternate_after_protected" — the same, but the parity restarts
            after the protected tokens (A = protected, protected + 2, ...).
            "importance" — A = the r least important tokens by `importance` (TESTA eq. 1, attention
            received), B = the rest; every A token merges into its most similar B token.
        importance: (B, N) scores, required for partition="importance".
        protected: the first `protected` tokens (e.g. CLS) never merge and never receive merges.
        impl: "auto" | "reference" | "cpu" | "triton" | "cuda".

    Returns:
        Matching of index tensors (see its docstring); feed it to merge / unmerge / merge_source.

    Ranking rule (every backend): an A token's partner is its most similar B token and A tokens merge
    most similar first; NaN ranks after every number and equal similarities (NaNs too) go to the
    lower position; similarities within 8 (C + 4) u of 1 count as 1, so duplicated rows tie. A metric
    row with NaN or +-inf is no error: its similarities are NaN, so it merges last (into B's first
    token). importance ranks least first, NaN after every number.
    """
    check_tensor("metric", metric, ndim=3, floating=True)
    batch, n, _ = metric.shape
    check_choice("partition", partition, tuple(PARTITIONS))
    check_int("protected", protected, 0, n)
    kind = PARTITIONS[partition]
    if kind != reference.IMPORTANCE:
        check_int("r", r, 0, (n - protected) // 2)
        if importance is not None:
            raise ValueError("importance is only used with partition='importance'")
    else:
        check_int("r", r, 0, max(n - protected - 1, 0))
        if importance is None:
            raise ValueError("partition='importance' needs importance of shape (B, N)")
        check_tensor("importance", importance, floating=True, like=metric, shape=(batch, n))
    impl = resolve("bipartite_match", impl, metric.device, BIPARTITE_MATCH)
    return Matching(*_bipartite_match(metric, r, kind, importance, protected, impl))


@torch.library.custom_op("vidsel::scatter_rows", mutates_args=())
def _scatter_rows(x: Tensor, dst_index: Tensor, weight: Optional[Tensor], n_out: int, impl: str) -> Tensor:
    return run_backend(SCATTER_ROWS, impl, x, dst_index, weight, n_out)


@torch.library.custom_op("vidsel::gather_rows", mutates_args=())
def _gather_rows(y: Tensor, dst_index: Tensor, weight: Optional[Tensor], impl: str) -> Tensor:
    return run_backend(GATHER_ROWS, impl, y, dst_index, weight)


@_scatter_rows.register_fake
def _(x, dst_index, weight, n_out, impl):
    return x.new_empty(x.shape[0], n_out, x.shape[2])


@_gather_rows.register_fake
def _(y, dst_index, weight, impl):
    return y.new_empty(dst_index.shape[0], dst_index.shape[1], y.shape[2])


def _rowwise_dot(a: Tensor, b: Tensor, dtype: torch.dtype) -> Tensor:
    """Gradient of a per-row weight: <a[b, i], b[b, i]> for every row."""
    return (a.to(torch.float64 if a.dtype == torch.float64 else torch.float32) * b).sum(-1).to(dtype)


def _scatter_setup(ctx, inputs, output):
    x, dst_index, weight, _, impl = inputs
    ctx.save_for_backward(x, dst_index, weight)
    ctx.impl = impl


def _scatter_backward(ctx, grad):
    x, dst_index, weight = ctx.saved_tensors
    grad = grad.contiguous()
    grad_x = _gather_rows(grad, dst_index, weight, ctx.impl) if ctx.needs_input_grad[0] else None
    grad_w = None
    if weight is not None and ctx.needs_input_grad[2]:
        grad_w = _rowwise_dot(_gather_rows(grad, dst_index, None, ctx.impl), x, weight.dtype)
    return grad_x, None, grad_w, None, None


def _gather_setup(ctx, inputs, output):
    y, dst_index, weight, impl = inputs
    ctx.save_for_backward(y, dst_index, weight)
    ctx.impl, ctx.n_rows = impl, y.shape[1]


def _gather_backward(ctx, grad):
    y, dst_index, weight = ctx.saved_tensors
    grad = grad.contiguous()
    grad_y = _scatter_rows(grad, dst_index, weight, ctx.n_rows, ctx.impl) if ctx.needs_input_grad[0] else None
    grad_w = None
    if weight is not None and ctx.needs_input_grad[2]:
        grad_w = _rowwise_dot(_gather_rows(y, dst_index, None, ctx.impl), grad, weight.dtype)
    return grad_y, None, grad_w, None


_scatter_rows.register_autograd(_scatter_backward, setup_context=_scatter_setup)
_gather_rows.register_autograd(_gather_backward, setup_context=_gather_setup)


@register_flop_formula(torch.ops.vidsel.scatter_rows)
def _scatter_flops(x_shape, dst_shape, weight_shape, n_out, impl, *args, **kwargs) -> int:
    batch, n, d = x_shape
    return batch * n * d * (2 if weight_shape is not None else 1)


@register_flop_formula(torch.ops.vidsel.gather_rows)
def _gather_flops(y_shape, dst_shape, weight_shape, impl, *args, **kwargs) -> int:
    return 0 if weight_shape is None else dst_shape[0] * dst_shape[1] * y_shape[2]


def _check_matching(matching) -> Matching:
    if not isinstance(matching, Matching):
        raise TypeError(f"matching must be a vidsel.ops.Matching, got {type(matching).__name__}")
    for name in matching._fields:
        value = getattr(matching, name)
        check_tensor(f"matching.{name}", value, ndim=2, dtypes=(torch.int64,))
    return matching


def _as_rows(name: str, x: Tensor, matching: Matching) -> Tensor:
    """(B, N, *F) -> (B, N, prod(F)) view for the row kernels (frames as tokens flatten (L, D))."""
    check_tensor(name, x, ndim=(3, 4, 5), floating=True, like=matching.dst_index)
    batch, n = matching.dst_index.shape
    if x.shape[0] != batch or x.shape[1] != n:
        raise ValueError(f"{name} must have shape (B={batch}, N={n}, ...) to match the matching, got {tuple(x.shape)}")
    return x.reshape(batch, n, math.prod(x.shape[2:]))  # not -1: B = 0 or N = 0 is a valid empty input


def merge(x: Tensor, matching: Matching, size: Tensor | None = None, impl: str = "auto") -> tuple[Tensor, Tensor]:
    """Size-weighted average of every group of tokens the matching joins (ToMe merge_wavg).

    Args:
        x: (B, N, D) tokens, or (B, T, L, D) frames merged as whole frames (TESTA TAM).
        matching: from bipartite_match on the same N tokens.
        size: (B, N) or (B, N, 1) number of original tokens each token already stands for
            (None = all ones). Differentiable like x, though usually a constant.
        impl: "auto" | "reference" | "cpu" | "triton" | "cuda".

    Returns:
        x_merged (B, N - r, ...) with surviving tokens in their original order, each the average
        sum_i size_i x_i / sum_i size_i over its group; size_merged (sums), shaped like `size`
        ((B, N - r) when size is None).
    """
    matching = _check_matching(matching)
    rows = _as_rows("x", x, matching)
    batch, n = matching.dst_index.shape
    n_out = matching.num_output
    if size is None:
        size_flat = torch.ones(batch, n, dtype=rows.dtype, device=rows.device)
    else:
        check_tensor("size", size, floating=True, like=x, shape=(batch, n) if size.dim() == 2 else (batch, n, 1))
        if size.dtype != x.dtype:
            raise TypeError(f"size must have x's dtype {x.dtype}, got {size.dtype}")
        size_flat = size.reshape(batch, n)
    size_merged = size_flat.new_zeros(batch, n_out).scatter_add(1, matching.dst_index, size_flat)
    weight = size_flat / size_merged.gather(1, matching.dst_index)
    impl = resolve("merge", impl, x.device, SCATTER_ROWS, GATHER_ROWS)
    if batch == 0 or n == 0:  # nothing to merge: the empty result of the right shape on every backend
        merged = rows.new_zeros(batch, n_out, rows.shape[2])
    else:
        merged = _scatter_rows(rows, matching.dst_index, weight, n_out, impl)
    size_out = size_merged if size is None else size_merged.reshape(batch, n_out, *size.shape[2:])
    return merged.reshape(batch, n_out, *x.shape[2:]), size_out


def unmerge(x_merged: Tensor, matching: Matching, impl: str = "auto") -> Tensor:
    """Copies every merged token back to each of its sources: (B, N - r, ...) -> (B, N, ...)."""
    matching = _check_matching(matching)
    check_tensor("x_merged", x_merged, ndim=(3, 4, 5), floating=True, like=matching.dst_index)
    batch, n = matching.dst_index.shape
    if x_merged.shape[0] != batch or x_merged.shape[1] != matching.num_output:
        raise ValueError(
            f"x_merged must have shape (B={batch}, N-r={matching.num_output}, ...), got {tuple(x_merged.shape)}"
        )
    impl = resolve("unmerge", impl, x_merged.device, SCATTER_ROWS, GATHER_ROWS)
    rows = x_merged.reshape(batch, matching.num_output, math.prod(x_merged.shape[2:]))
    if batch == 0 or n == 0:
        return x_merged.new_zeros(batch, n, *x_merged.shape[2:])
    return _gather_rows(rows, matching.dst_index, None, impl).reshape(batch, n, *x_merged.shape[2:])


def merge_source(matching: Matching, source: Tensor | None = None, impl: str = "auto") -> Tensor:
    """Which original tokens every output token covers; compose across layers by passing it back.

    source: (B, N, N0) bool from the previous layer (None = identity, N0 = N).
    Returns (B, N - r, N0) bool: out[b, j, k] is True when output token j contains original token k.
    """
    matching = _check_matching(matching)
    batch, n = matching.dst_index.shape
    if source is None:
        source = torch.eye(n, dtype=torch.bool, device=matching.dst_index.device).expand(batch, n, n)
    check_tensor("source", source, ndim=3, dtypes=(torch.bool,), like=matching.dst_index, shape=(batch, n, None))
    impl = resolve("merge_source", impl, source.device, SCATTER_ROWS)
    covered = _scatter_rows(source.to(torch.float32), matching.dst_index, None, matching.num_output, impl)
    return covered > 0
