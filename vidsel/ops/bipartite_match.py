"""`bipartite_match`: which tokens merge where (TESTA §3.2.2, ToMe bipartite soft matching).

Spatial aggregation (SAM), patches of each frame as tokens::

    keys = attn_keys.mean(1)                        # (B*T, L, C) metric per patch
    m = vidsel.ops.bipartite_match(keys, r=R_S)     # per frame, alternate A/B partition
    x, size = vidsel.ops.merge(x, m, size)          # (B*T, L, D) -> (B*T, L-R_S, D)

Temporal aggregation (TAM), whole frames as tokens (TESTA §3.2.1: a frame token is the mean of
its patch tokens)::

    frame_metric = keys.view(B, T, L, C).mean(2)    # (B, T, C)
    m = vidsel.ops.bipartite_match(frame_metric, r=R_T)
    x, _ = vidsel.ops.merge(x, m)                   # x (B, T, L, D) -> (B, T-R_T, L, D)
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from vidsel import _backends
from vidsel.ops._validation import check_choice, check_finite, check_int, check_tensor
from vidsel.reference import token_merging as reference

PARTITIONS = {"alternate": reference.ALTERNATE, "importance": reference.IMPORTANCE}
SUPPORTED_IMPLS = ("reference", "cpu", "triton", "cuda")


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
    free = n - protected
    return ((free + 1) // 2, free // 2) if kind == reference.ALTERNATE else (r, free - r)


@torch.library.custom_op("vidsel::bipartite_match", mutates_args=())
def _bipartite_match(
    metric: Tensor, r: int, partition: int, importance: Optional[Tensor], protected: int, impl: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    check_finite("metric", metric)
    if importance is not None:
        check_finite("importance", importance)
    if impl == "reference":
        return reference.bipartite_match(metric, r, partition, importance, protected)
    if impl in ("cpu", "cuda"):
        return tuple(torch.ops.vidsel_C.bipartite_match(metric, r, partition, importance, protected))
    if impl == "triton":
        return _bipartite_match_triton(metric, r, partition, importance, protected)
    raise ValueError(f"bipartite_match: unknown impl {impl!r}")


def _bipartite_match_triton(metric, r, kind, importance, protected):
    """Triton fuses similarity + row max/argmax; the small (B, |A|) selection runs in PyTorch."""
    from vidsel.kernels.bipartite_match import best_partner

    batch, n, c = metric.shape
    a_pos, b_pos = reference.partition_positions(batch, n, r, kind, importance, protected, metric.device)
    if r == 0 or b_pos.shape[1] == 0:
        scores = torch.zeros(a_pos.shape, dtype=torch.float32, device=metric.device)
        partner = torch.zeros(a_pos.shape, dtype=torch.int64, device=metric.device)
    else:
        take = lambda pos: metric.gather(1, pos.unsqueeze(-1).expand(-1, -1, c))  # noqa: E731
        scores, partner = best_partner(take(a_pos), take(b_pos))
    return reference.matching_from_partners(n, r, kind, a_pos, b_pos, scores, partner)


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
        partition: "alternate" — A = even, B = odd positions after the protected tokens (geometry-
            based); each A token finds its most similar B token and the r most similar pairs merge.
            "importance" — A = the r least important tokens by `importance` (TESTA eq. 1, attention
            received), B = the rest; every A token merges into its most similar B token.
        importance: (B, N) scores, required for partition="importance".
        protected: the first `protected` tokens (e.g. CLS) never merge and never receive merges.
        impl: "auto" | "reference" | "cpu" | "triton" | "cuda".

    Returns:
        Matching of index tensors (see its docstring); feed it to merge / unmerge / merge_source.
    """
    check_tensor("metric", metric, ndim=3, floating=True)
    batch, n, _ = metric.shape
    check_choice("partition", partition, tuple(PARTITIONS))
    check_int("protected", protected, 0, n)
    kind = PARTITIONS[partition]
    if kind == reference.ALTERNATE:
        check_int("r", r, 0, (n - protected) // 2)
        if importance is not None:
            raise ValueError("importance is only used with partition='importance'")
    else:
        check_int("r", r, 0, max(n - protected - 1, 0))
        if importance is None:
            raise ValueError("partition='importance' needs importance of shape (B, N)")
        check_tensor("importance", importance, floating=True, like=metric, shape=(batch, n))
    impl = _backends.resolve_impl("bipartite_match", impl, metric.device, SUPPORTED_IMPLS)
    return Matching(*_bipartite_match(metric, r, kind, importance, protected, impl))
