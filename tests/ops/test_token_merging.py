"""bipartite_match / merge / unmerge / merge_source: every backend against the reference."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import vidsel.ops as ops
from tests.helpers import (DTYPES, assert_close, compiled_backends, cpu_backends, device_backends,
                           fused_device_backends, non_contiguous)
from vidsel.reference import token_merging as reference

BACKENDS = cpu_backends()
FUSED = compiled_backends()
ON_DEVICES = device_backends()  # (device, impl): CPU tensors here, CUDA tensors on a GPU machine
FUSED_ON_DEVICES = fused_device_backends()

# (B, N, C, r, protected, partition): odd N, N=2, r=0, r=max, B=1, protected CLS, C not a multiple of 16.
MATCH_CASES = [
    (2, 17, 20, 5, 0, "alternate"),
    (1, 2, 3, 1, 0, "alternate"),
    (3, 9, 8, 0, 0, "alternate"),
    (2, 33, 7, 16, 0, "alternate"),  # r = max
    (2, 34, 7, 16, 1, "alternate"),  # r = max with CLS
    (1, 50, 64, 12, 1, "alternate"),
    (2, 17, 20, 5, 0, "importance"),
    (3, 26, 9, 24, 1, "importance"),  # one B token left
    (1, 5, 4, 0, 1, "importance"),
]


def _inputs(case, dtype=torch.float32):
    batch, n, c, r, protected, partition = case
    metric = torch.randn(batch, n, c, dtype=dtype)
    importance = torch.rand(batch, n) if partition == "importance" else None
    return metric, dict(r=r, partition=partition, importance=importance, protected=protected)


@pytest.mark.parametrize("device, impl", FUSED_ON_DEVICES)
@pytest.mark.parametrize("case", MATCH_CASES, ids=str)
def test_match_indices_equal_reference(device, impl, case):
    metric, kwargs = _inputs(case)
    expected = ops.bipartite_match(metric, impl="reference", **kwargs)
    got = ops.bipartite_match(metric, impl=impl, **kwargs)
    for name, e, g in zip(expected._fields, expected, got):
        assert torch.equal(e, g), name


@pytest.mark.parametrize("device, impl", FUSED_ON_DEVICES)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float16, torch.bfloat16))
def test_match_dtypes(device, impl, dtype):
    metric = torch.randn(2, 41, 24).to(dtype)
    expected = ops.bipartite_match(metric, 13, protected=1, impl="reference")
    got = ops.bipartite_match(non_contiguous(metric), 13, protected=1, impl=impl)
    assert all(torch.equal(e, g) for e, g in zip(expected, got))


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_match_semantics(device, impl):
    """Hand-checkable case: token 2 duplicates token 3, token 0 duplicates token 1."""
    metric = torch.tensor([[[1.0, 0], [1.0, 0.01], [0, 1.0], [0, 1.0], [1.0, 1.0], [-1.0, 0.5]]])
    m = ops.bipartite_match(metric, 2, impl=impl)
    assert m.merged_index.tolist() == [[0, 2]]
    assert m.merged_into.tolist() == [[1, 3]]
    assert m.kept_index.tolist() == [[1, 3, 4, 5]]
    assert m.dst_index.tolist() == [[0, 0, 1, 1, 2, 3]]


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_protected_tokens_never_merge(device, impl):
    metric = torch.randn(2, 21, 6)
    metric[:, 0] = metric[:, 2]  # CLS identical to an A token: still must survive untouched
    m = ops.bipartite_match(metric, 10, protected=1, impl=impl)
    assert (m.kept_index[:, 0] == 0).all() and (m.dst_index[:, 0] == 0).all()
    assert not (m.merged_into == 0).any()


@pytest.mark.parametrize("device, impl", FUSED_ON_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_size", [False, True])
def test_merge_unmerge_equal_reference(device, impl, dtype, with_size):
    metric = torch.randn(3, 29, 12)
    m = ops.bipartite_match(metric, 11, protected=1, impl="reference")
    x = non_contiguous(torch.randn(3, 29, 45).to(dtype))
    size = torch.randint(1, 4, (3, 29, 1)).to(dtype) if with_size else None
    expected, expected_size = ops.merge(x, m, size, impl="reference")
    got, got_size = ops.merge(x, m, size, impl=impl)
    assert_close(got, expected, dtype)
    assert_close(got_size, expected_size, dtype)
    assert_close(ops.unmerge(got, m, impl=impl), ops.unmerge(expected, m, impl="reference"), dtype)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_merge_invariants(device, impl):
    x = torch.randn(2, 40, 16, dtype=torch.float64)
    size = torch.randint(1, 5, (2, 40)).double()
    m = ops.bipartite_match(torch.randn(2, 40, 8), 15, impl=impl)
    merged, merged_size = ops.merge(x, m, size, impl=impl)
    assert merged.shape == (2, 25, 16) and merged_size.shape == (2, 25)
    torch.testing.assert_close(merged_size.sum(1), size.sum(1))
    torch.testing.assert_close((merged * merged_size[..., None]).sum(1), (x * size[..., None]).sum(1))
    # surviving tokens keep their original relative order and, when unmerged with nothing, their values
    alone = merged_size == size.gather(1, m.kept_index)
    torch.testing.assert_close(merged[alone], x.gather(1, m.kept_index[..., None].expand(-1, -1, 16))[alone])


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_temporal_and_spatial_aggregation(device, impl):
    """TESTA TAM: whole frames merge along T; SAM: patches merge within every frame."""
    batch, frames, patches, dim = 2, 7, 10, 6
    x = torch.randn(batch, frames, patches, dim)
    keys = torch.randn(batch, frames, patches, 5)
    tam = ops.bipartite_match(keys.mean(2), 3, impl=impl)  # frame token = mean over patches (§3.2.1)
    frames_merged, _ = ops.merge(x, tam, impl=impl)
    assert frames_merged.shape == (batch, 4, patches, dim)
    flat, _ = ops.merge(x.reshape(batch, frames, -1), tam, impl="reference")
    assert_close(frames_merged, flat.reshape(batch, 4, patches, dim))

    per_frame = frames_merged.reshape(batch * 4, patches, dim)
    sam = ops.bipartite_match(per_frame, 4, impl=impl)
    patches_merged, size = ops.merge(per_frame, sam, impl=impl)
    assert patches_merged.shape == (batch * 4, 6, dim) and (size.sum(1) == patches).all()


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_merge_source_composes(device, impl):
    m1 = ops.bipartite_match(torch.randn(2, 30, 4), 10, impl=impl)
    m2 = ops.bipartite_match(torch.randn(2, 20, 4), 7, impl=impl)
    source = ops.merge_source(m2, ops.merge_source(m1, impl=impl), impl=impl)
    assert source.shape == (2, 13, 30) and source.dtype == torch.bool
    assert (source.sum(1) == 1).all()  # every original token is in exactly one output token
    _, size = ops.merge(torch.randn(2, 20, 3), m2, ops.merge(torch.randn(2, 30, 3), m1)[1], impl=impl)
    torch.testing.assert_close(source.sum(-1).to(size.dtype), size)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_gradcheck_merge_and_unmerge(device, impl):
    m = ops.bipartite_match(torch.randn(2, 11, 4), 4, protected=1, impl="reference")
    x = torch.randn(2, 11, 5, dtype=torch.float64, requires_grad=True)
    size = (torch.rand(2, 11, dtype=torch.float64) + 0.5).requires_grad_()
    y = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, s: ops.merge(a, m, s, impl=impl), (x, size))
    assert torch.autograd.gradcheck(lambda a: ops.unmerge(a, m, impl=impl), (y,))


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_opcheck(device, impl):
    metric = torch.randn(2, 13, 6)
    importance = torch.rand(2, 13)
    torch.library.opcheck(torch.ops.vidsel.bipartite_match.default, (metric, 4, 0, None, 1, impl))
    torch.library.opcheck(torch.ops.vidsel.bipartite_match.default, (metric, 4, 1, importance, 1, impl))
    m = ops.bipartite_match(metric, 4, impl="reference")
    x = torch.randn(2, 13, 7, requires_grad=True)
    w = torch.rand(2, 13, requires_grad=True)
    y = torch.randn(2, 9, 7, requires_grad=True)
    torch.library.opcheck(torch.ops.vidsel.scatter_rows.default, (x, m.dst_index, w, 9, impl))
    torch.library.opcheck(torch.ops.vidsel.scatter_rows.default, (x, m.dst_index, None, 9, impl))
    torch.library.opcheck(torch.ops.vidsel.gather_rows.default, (y, m.dst_index, w, impl))


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_compile_fullgraph_matches_eager(device, impl):
    def layer(x, keys, size):
        m = ops.bipartite_match(keys, 6, protected=1, impl=impl)
        merged, size = ops.merge(x, m, size, impl=impl)
        return ops.unmerge(merged * 2, m, impl=impl), size

    x, keys, size = torch.randn(2, 19, 8), torch.randn(2, 19, 5), torch.ones(2, 19, 1)
    compiled = torch.compile(layer, fullgraph=True, backend="inductor")
    for got, expected in zip(compiled(x, keys, size), layer(x, keys, size)):
        assert_close(got, expected)


def test_flop_counter_counts_ops():
    metric, x = torch.randn(2, 40, 8), torch.randn(2, 40, 16)
    with FlopCounterMode(display=False) as counter:
        ops.merge(x, ops.bipartite_match(metric, 10, impl="cpu" if "cpu" in BACKENDS else "reference"))
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    assert counts["vidsel.bipartite_match"] == 2 * 2 * 20 * 20 * 8
    assert counts["vidsel.scatter_rows"] == 2 * 2 * 40 * 16


def test_reference_best_partner_is_first_argmax():
    a = torch.tensor([[[1.0, 0.0]]])
    b = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [1.0, 0.0]]])
    score, index = reference.best_partner(a, b)
    assert index.item() == 1 and score.item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: ops.bipartite_match(torch.randn(4, 6), 1), ValueError, "metric must have 3"),
        (lambda: ops.bipartite_match([[1.0]], 1), TypeError, "metric must be a torch.Tensor"),
        (lambda: ops.bipartite_match(torch.randn(1, 6, 3), 4), ValueError, r"r=4 must be in \[0, 3\]"),
        (lambda: ops.bipartite_match(torch.randn(1, 6, 3), -1), ValueError, "r=-1"),
        (lambda: ops.bipartite_match(torch.randn(1, 6, 3), 1.5), TypeError, "r must be an int"),
        (lambda: ops.bipartite_match(torch.randint(0, 3, (1, 6, 3)), 1), TypeError, "metric must be a floating"),
        (lambda: ops.bipartite_match(torch.randn(1, 6, 3), 1, partition="x"), ValueError, "partition must be"),
        (lambda: ops.bipartite_match(torch.randn(1, 6, 3), 1, partition="importance"), ValueError, "importance"),
        (lambda: ops.bipartite_match(torch.randn(1, 6, 3), 1, partition="importance", importance=torch.rand(1, 5)),
         ValueError, r"importance must have shape \(1, 6\)"),
        (lambda: ops.bipartite_match(torch.randn(1, 6, 3), 1, protected=7), ValueError, "protected=7"),
        (lambda: ops.bipartite_match(torch.randn(1, 6, 3), 1, impl="gpu"), ValueError, "impl must be one of"),
        (lambda: ops.merge(torch.randn(2, 6, 3), ops.bipartite_match(torch.randn(1, 6, 3), 1)), ValueError,
         r"x must have shape \(B=1, N=6"),
        (lambda: ops.merge(torch.randn(1, 6, 3), ops.bipartite_match(torch.randn(1, 6, 3), 1), torch.ones(1, 5)),
         ValueError, "size must have shape"),
        (lambda: ops.merge(torch.randn(1, 6, 3), ops.bipartite_match(torch.randn(1, 6, 3), 1), torch.ones(1, 6).long()),
         TypeError, "size must be a floating"),
        (lambda: ops.merge(torch.randn(1, 6, 3), (1, 2)), TypeError, "matching must be"),
        (lambda: ops.merge(torch.randn(1, 6, 3), ops.bipartite_match(torch.randn(1, 6, 3), 1), torch.ones(1, 6).double()),
         TypeError, "size must have x's dtype"),
        (lambda: ops.bipartite_match(torch.randn(1, 6, 3), 1, partition="importance",
                                     importance=torch.rand(1, 6, device="meta")), ValueError, "importance is on meta"),
        (lambda: ops.merge(torch.randn(1, 6, 3, device="meta"), ops.bipartite_match(torch.randn(1, 6, 3), 1)),
         ValueError, "x is on meta"),
        (lambda: ops.unmerge(torch.randn(1, 6, 3), ops.bipartite_match(torch.randn(1, 6, 3), 1)), ValueError,
         "x_merged must have shape"),
    ],
)
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


def _same_matching(expected, got):
    for name, e, g in zip(expected._fields, expected, got):
        assert torch.equal(e, g), name


# Ranking rule: larger similarity first, NaN after every number, ties (and NaNs) by lower position;
# similarities within rounding of 1 are 1. (B, N, C, distinct rows, r, protected, partition, dtype)
TIE_CASES = [
    (2, 40, 1, 40, 10, 0, "alternate", torch.float32),  # C = 1: every similarity is exactly -1 or 1
    (2, 40, 1, 40, 19, 1, "alternate", torch.float64),
    (1, 33, 1, 33, 16, 0, "alternate", torch.float16),
    (2, 40, 7, 5, 12, 0, "alternate", torch.float32),  # duplicated rows
    (2, 57, 20, 3, 20, 2, "alternate", torch.float32),
    (2, 41, 9, 4, 15, 1, "alternate_after_protected", torch.float64),
    (3, 70, 16, 6, 30, 1, "alternate", torch.bfloat16),
    (2, 30, 5, 4, 12, 1, "importance", torch.float32),
    (2, 300, 1, 300, 140, 0, "alternate", torch.float32),  # more B rows than one tile
]


def _tie_inputs(case):
    batch, n, c, distinct, r, protected, partition, dtype = case
    base = torch.randn(batch, distinct, c)
    metric = base.gather(1, torch.randint(0, distinct, (batch, n, 1)).expand(-1, -1, c)).to(dtype)
    # integer importances: many exact ties
    importance = torch.randint(0, 3, (batch, n)).float() if partition == "importance" else None
    return metric, dict(r=r, partition=partition, importance=importance, protected=protected)


@pytest.mark.parametrize("device, impl", FUSED_ON_DEVICES)
@pytest.mark.parametrize("case", TIE_CASES, ids=str)
def test_exact_ties_match_reference(device, impl, case):
    """Duplicated rows and C = 1 tie exactly, and every backend breaks the ties the same way."""
    metric, kwargs = _tie_inputs(case)
    _same_matching(ops.bipartite_match(metric, impl="reference", **kwargs),
                   ops.bipartite_match(metric, impl=impl, **kwargs))


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_ties_go_to_the_lower_position(device, impl):
    """C = 1, all positive: every similarity is 1, so the first A tokens merge into B's first token."""
    metric = torch.tensor([[[3.0], [0.1], [7.0], [2.0], [5.0], [9.0], [0.3], [4.0]]])
    m = ops.bipartite_match(metric, 3, impl=impl)
    assert m.merged_index.tolist() == [[0, 2, 4]] and m.merged_into.tolist() == [[1, 1, 1]]
    metric[0, 1] = -1.0  # B's first token now points away: partner is the next B token
    m = ops.bipartite_match(metric, 3, impl=impl)
    assert m.merged_index.tolist() == [[0, 2, 4]] and m.merged_into.tolist() == [[3, 3, 3]]


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_scaled_copy_ties_with_a_duplicate(device, impl):
    """A token's exact duplicate and a scaled copy both have similarity 1 (within rounding): a tie,
    so the lower positions merge first and the first of the two partners is taken."""
    torch.manual_seed(3)
    metric = torch.randn(1, 10, 24)
    metric[0, 5] = metric[0, 0]  # A 0 -> B 5, exact duplicate
    metric[0, 3] = metric[0, 4] * 3.7  # A 4 -> B 3, scaled copy
    metric[0, 7] = metric[0, 4]  # and an exact duplicate later in B
    m = ops.bipartite_match(metric, 2, impl=impl)
    assert m.merged_index.tolist() == [[0, 4]] and m.merged_into.tolist() == [[5, 3]]


@pytest.mark.parametrize("device, impl", ON_DEVICES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_metric_rows_rank_last(device, impl, bad):
    """A row holding NaN or +-inf has NaN similarity with every row: no error (no host sync), its A
    token merges only after every finite pair, into B's first token, and nothing merges into it."""
    torch.manual_seed(1)
    metric = torch.randn(2, 12, 5, dtype=torch.float64)
    metric[0, 2, 1] = bad  # an A token
    metric[0, 1, 3] = bad  # B's first token
    metric[1, :, 0] = bad  # every token of the second image
    few = ops.bipartite_match(metric, 4, impl=impl)
    assert 2 not in few.merged_index[0].tolist() and 1 not in few.merged_into[0].tolist()
    assert few.merged_index[1].tolist() == [0, 2, 4, 6] and few.merged_into[1].tolist() == [1, 1, 1, 1]
    every = ops.bipartite_match(metric, 6, impl=impl)
    row = every.merged_index[0].tolist().index(2)
    assert every.merged_into[0, row].item() == 1  # the NaN row's partner: B's first token
    for r in (4, 6):
        _same_matching(ops.bipartite_match(metric, r, impl="reference"), ops.bipartite_match(metric, r, impl=impl))
    _same_matching(ops.bipartite_match(metric.float(), 5, impl="reference"),
                   ops.bipartite_match(metric.float(), 5, impl=impl))


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_nan_importance_ranks_last(device, impl):
    """partition='importance': A = the least important tokens; a NaN importance is picked last."""
    importance = torch.tensor([[5.0, float("nan"), 1.0, float("-inf"), 2.0, float("inf"), 1.0, 0.0]])
    metric = torch.randn(1, 8, 4)
    m = ops.bipartite_match(metric, 4, partition="importance", importance=importance, impl=impl)
    assert m.merged_index.tolist() == [[2, 3, 6, 7]]  # -inf, 0, 1, 1 (equal ones by position)
    m = ops.bipartite_match(metric, 7, partition="importance", importance=importance, impl=impl)
    assert m.kept_index.tolist() == [[1]]  # the NaN token is the last one left in B
    _same_matching(ops.bipartite_match(metric, 6, partition="importance", importance=importance, impl="reference"),
                   ops.bipartite_match(metric, 6, partition="importance", importance=importance, impl=impl))


@pytest.mark.parametrize("impl", [b for b in FUSED if b == "cpu"])
def test_cpu_kernels_reject_out_of_range_indices(impl):
    x = torch.randn(1, 4, 3)
    with pytest.raises(RuntimeError, match="dst_index"):
        torch.ops.vidsel_C.scatter_rows(x, torch.tensor([[0, 1, 2, 5]]), None, 3)
    with pytest.raises(RuntimeError, match="dst_index"):
        torch.ops.vidsel_C.gather_rows(x, torch.tensor([[0, -1]]), None)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
@pytest.mark.parametrize("partition", ["alternate", "alternate_after_protected"])
def test_every_token_protected_is_the_identity(device, impl, partition):
    for n in (3, 4):
        m = ops.bipartite_match(torch.randn(2, n, 2), 0, partition=partition, protected=n, impl=impl)
        assert m.dst_index.tolist() == [list(range(n))] * 2 and m.merged_index.shape == (2, 0)
