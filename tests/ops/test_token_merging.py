"""bipartite_match / merge / unmerge / merge_source: every backend against the reference."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import vidsel.ops as ops
from tests.helpers import DTYPES, assert_close, compiled_backends, cpu_backends, non_contiguous
from vidsel.reference import token_merging as reference

BACKENDS = cpu_backends()
FUSED = compiled_backends()

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


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("case", MATCH_CASES, ids=str)
def test_match_indices_equal_reference(impl, case):
    metric, kwargs = _inputs(case)
    expected = ops.bipartite_match(metric, impl="reference", **kwargs)
    got = ops.bipartite_match(metric, impl=impl, **kwargs)
    for name, e, g in zip(expected._fields, expected, got):
        assert torch.equal(e, g), name


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float16, torch.bfloat16))
def test_match_dtypes(impl, dtype):
    metric = torch.randn(2, 41, 24).to(dtype)
    expected = ops.bipartite_match(metric, 13, protected=1, impl="reference")
    got = ops.bipartite_match(non_contiguous(metric), 13, protected=1, impl=impl)
    assert all(torch.equal(e, g) for e, g in zip(expected, got))


@pytest.mark.parametrize("impl", BACKENDS)
def test_match_semantics(impl):
    """Hand-checkable case: token 2 duplicates token 3, token 0 duplicates token 1."""
    metric = torch.tensor([[[1.0, 0], [1.0, 0.01], [0, 1.0], [0, 1.0], [1.0, 1.0], [-1.0, 0.5]]])
    m = ops.bipartite_match(metric, 2, impl=impl)
    assert m.merged_index.tolist() == [[0, 2]]
    assert m.merged_into.tolist() == [[1, 3]]
    assert m.kept_index.tolist() == [[1, 3, 4, 5]]
    assert m.dst_index.tolist() == [[0, 0, 1, 1, 2, 3]]


@pytest.mark.parametrize("impl", BACKENDS)
def test_protected_tokens_never_merge(impl):
    metric = torch.randn(2, 21, 6)
    metric[:, 0] = metric[:, 2]  # CLS identical to an A token: still must survive untouched
    m = ops.bipartite_match(metric, 10, protected=1, impl=impl)
    assert (m.kept_index[:, 0] == 0).all() and (m.dst_index[:, 0] == 0).all()
    assert not (m.merged_into == 0).any()


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_size", [False, True])
def test_merge_unmerge_equal_reference(impl, dtype, with_size):
    metric = torch.randn(3, 29, 12)
    m = ops.bipartite_match(metric, 11, protected=1, impl="reference")
    x = non_contiguous(torch.randn(3, 29, 45).to(dtype))
    size = torch.randint(1, 4, (3, 29, 1)).to(dtype) if with_size else None
    expected, expected_size = ops.merge(x, m, size, impl="reference")
    got, got_size = ops.merge(x, m, size, impl=impl)
    assert_close(got, expected, dtype)
    assert_close(got_size, expected_size, dtype)
    assert_close(ops.unmerge(got, m, impl=impl), ops.unmerge(expected, m, impl="reference"), dtype)


@pytest.mark.parametrize("impl", BACKENDS)
def test_merge_invariants(impl):
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


@pytest.mark.parametrize("impl", BACKENDS)
def test_temporal_and_spatial_aggregation(impl):
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


@pytest.mark.parametrize("impl", BACKENDS)
def test_merge_source_composes(impl):
    m1 = ops.bipartite_match(torch.randn(2, 30, 4), 10, impl=impl)
    m2 = ops.bipartite_match(torch.randn(2, 20, 4), 7, impl=impl)
    source = ops.merge_source(m2, ops.merge_source(m1, impl=impl), impl=impl)
    assert source.shape == (2, 13, 30) and source.dtype == torch.bool
    assert (source.sum(1) == 1).all()  # every original token is in exactly one output token
    _, size = ops.merge(torch.randn(2, 20, 3), m2, ops.merge(torch.randn(2, 30, 3), m1)[1], impl=impl)
    torch.testing.assert_close(source.sum(-1).to(size.dtype), size)


@pytest.mark.parametrize("impl", BACKENDS)
def test_gradcheck_merge_and_unmerge(impl):
    m = ops.bipartite_match(torch.randn(2, 11, 4), 4, protected=1, impl="reference")
    x = torch.randn(2, 11, 5, dtype=torch.float64, requires_grad=True)
    size = (torch.rand(2, 11, dtype=torch.float64) + 0.5).requires_grad_()
    y = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, s: ops.merge(a, m, s, impl=impl), (x, size))
    assert torch.autograd.gradcheck(lambda a: ops.unmerge(a, m, impl=impl), (y,))


@pytest.mark.parametrize("impl", BACKENDS)
def test_opcheck(impl):
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


@pytest.mark.parametrize("impl", BACKENDS)
def test_compile_fullgraph_matches_eager(impl):
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


@pytest.mark.parametrize("impl", BACKENDS)
def test_nan_metric_rejected(impl):
    metric = torch.randn(1, 8, 3)
    metric[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="metric contains NaN"):
        ops.bipartite_match(metric, 2, impl=impl)


@pytest.mark.parametrize("impl", [b for b in FUSED if b == "cpu"])
def test_cpu_kernels_reject_out_of_range_indices(impl):
    x = torch.randn(1, 4, 3)
    with pytest.raises(RuntimeError, match="dst_index"):
        torch.ops.vidsel_C.scatter_rows(x, torch.tensor([[0, 1, 2, 5]]), None, 3)
    with pytest.raises(RuntimeError, match="dst_index"):
        torch.ops.vidsel_C.gather_rows(x, torch.tensor([[0, -1]]), None)
