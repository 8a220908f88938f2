"""Every public op under torch.compile(fullgraph=True): dynamic shapes, changing sequence lengths,
counted and bounded recompiles, results equal to eager.

Each case builds its inputs for a sequence length L (tokens, items, frames or positions, whichever
axis the op reduces over) and calls the op with fixed static arguments. The compiled function runs on
three lengths; torch._dynamo.utils.counters counts the graphs Dynamo installs (compiles + recompiles).

Bounds: with dynamic=True every op traces ONE graph for all lengths, except where the op's own
arguments are a function of L (then at most one graph per distinct length, stated per case). With
the default automatic dynamic shapes an op may compile twice: once static, once dynamic on the
second length. seed=None under compile is tested in tests/ops/test_contract.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch._dynamo.utils import counters

from tests.helpers import cpu_backends
from vidsel import ops
from vidsel.ops import CompressedEmbedParams

IMPLS = cpu_backends()
LENGTHS = (5, 8, 11)


@dataclass(frozen=True)
class Case:
    """fn(impl, *tensors) calls the op; inputs(L) builds its tensors for sequence length L;
    graphs: the most graphs dynamic=True may trace over LENGTHS (1 unless the op specialises on L)."""

    fn: Callable
    inputs: Callable
    graphs: int = 1


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=_gen(seed + sum(shape)))


def _embed_inputs(n):
    """compressed_patch_embed's sequence axis is time: T = L frames of a 4x4 image, patch 2 (sizes
    chosen apart from T, so Dynamo's duck sizing does not tie T to a static size)."""
    frames, dim = n, 3
    inputs = [_randn(1, frames, 3, 4, 4), _randn(1, frames, 2, 2, 2, seed=1), _randn(1, frames, 3, 4, 4, seed=2),
              _randn(1, frames, 7, seed=3)]
    params = []
    for i, channels in enumerate((3, 2, 3)):
        params += [_randn(dim, channels, 2, 2, seed=i), _randn(dim, seed=i), _randn(frames, 4, dim, seed=i)]
    params += [_randn(dim, 7, seed=9), _randn(dim, seed=9), _randn(frames, dim, seed=9)]
    return (*inputs, *params)


def _embed(impl, iframe, motion, residual, audio, *params):
    return ops.compressed_patch_embed(iframe, motion, residual, audio, CompressedEmbedParams(*params), patch=2,
                                      impl=impl)


def _merge(impl, x, metric):
    m = ops.bipartite_match(metric, 2, impl=impl)
    merged, size = ops.merge(x, m, impl=impl)
    return merged, size, ops.unmerge(merged, m, impl=impl), ops.merge_source(m, impl=impl)


CASES = {
    "bipartite_match": Case(lambda impl, m: tuple(ops.bipartite_match(m, 2, impl=impl)),
                            lambda n: (_randn(2, n, 3),)),
    "bipartite_match_importance": Case(
        lambda impl, m, s: tuple(ops.bipartite_match(m, 2, partition="importance", importance=s, impl=impl)),
        lambda n: (_randn(2, n, 3), _randn(2, n, seed=1))),
    "merge_unmerge_merge_source": Case(_merge, lambda n: (_randn(2, n, 4), _randn(2, n, 3, seed=1))),
    "topk_gather": Case(lambda impl, x, s: ops.topk_gather(x, s, 3, impl=impl),
                        lambda n: (_randn(2, n, 4), _randn(2, n, seed=1))),
    "perturbed_topk": Case(lambda impl, s: ops.perturbed_topk(s, 2, num_samples=3, sigma=0.1, seed=7, impl=impl),
                           lambda n: (_randn(2, n),)),
    "perturbed_topk_select": Case(
        lambda impl, x, s: ops.perturbed_topk_select(x, s, 2, num_samples=3, sigma=0.1, seed=7, impl=impl),
        lambda n: (_randn(2, n, 4), _randn(2, n, seed=1))),
    "gumbel_topk": Case(lambda impl, s: ops.gumbel_topk(s, 3, tau=0.5, hard=False, seed=7, impl=impl),
                        lambda n: (_randn(2, n),)),
    "gumbel_topk_select": Case(
        lambda impl, x, s: ops.gumbel_topk_select(x, s, 3, hard=True, replacement=False, seed=7, impl=impl),
        lambda n: (_randn(2, n, 4), _randn(2, n, seed=1))),
    "anchor_scores": Case(lambda impl, s: ops.anchor_scores(s, (2, 3), (1, 2), impl=impl),
                          lambda n: (_randn(2, 4, n),)),
    "anchor_select": Case(lambda impl, x, s: ops.anchor_select(x, s, (2, 3), (1, 2), impl=impl),
                          lambda n: (_randn(1, 2, 4, n, 3), _randn(1, 2, 4, n, seed=1))),
    "anchor_select_perturbed": Case(
        lambda impl, x, s: ops.anchor_select(x, s, 2, mode="perturbed", num_samples=3, seed=7, impl=impl),
        lambda n: (_randn(1, 2, 4, n, 3), _randn(1, 2, 4, n, seed=1))),
    "frame_select": Case(lambda impl, x, s: ops.frame_select(x, s, 2, impl=impl),
                         lambda n: (_randn(2, n, 3, 4), _randn(2, n, seed=1))),
    "frame_select_perturbed": Case(
        lambda impl, x, s: ops.frame_select(x, s, 2, mode="perturbed", num_samples=3, seed=7, impl=impl),
        lambda n: (_randn(2, n, 3, 4), _randn(2, n, seed=1))),
    # chunk_size: the chunk list is a static op argument computed from L, so one graph per length
    "chunk_causal_attention": Case(lambda impl, q: ops.chunk_causal_attention(q, q, q, chunk_size=3, impl=impl),
                                   lambda n: (_randn(1, 2, n, 4),), graphs=len(LENGTHS)),
    # a tensor of chunk lengths: read at run time (unbacked symbolic ints), one graph for every layout
    "chunk_causal_attention_lens_tensor": Case(
        lambda impl, q, lens: ops.chunk_causal_attention(q, q, q, chunk_lens=lens, impl=impl),
        lambda n: (_randn(1, 2, n, 4), torch.tensor([2, n - 4, 2]))),
    "compressed_patch_embed": Case(_embed, _embed_inputs),
}


def _flat(out):
    return [t for item in (out if isinstance(out, (tuple, list)) else (out,))
            for t in (item if isinstance(item, (tuple, list)) else (item,))]


def _assert_same(compiled, eager, name):
    compiled, eager = _flat(compiled), _flat(eager)
    assert len(compiled) == len(eager), name
    for got, want in zip(compiled, eager):
        assert got.shape == want.shape and got.dtype == want.dtype, name
        assert torch.equal(got, want) or torch.allclose(got, want, rtol=1e-6, atol=1e-6, equal_nan=True), name


def _run(name, impl, dynamic, backend="aot_eager"):
    """Compiles case `name`, checks it against eager on every length; returns the number of graphs
    Dynamo installed (torch._dynamo.utils.counters["stats"]["unique_graphs"]: one per compile or
    recompile; a restarted analysis of the same frame is not one)."""
    case = CASES[name]
    torch._dynamo.reset()
    counters.clear()
    fn = torch.compile(lambda *t: case.fn(impl, *t), fullgraph=True, dynamic=dynamic, backend=backend)
    for length in LENGTHS:
        inputs = case.inputs(length)
        _assert_same(fn(*inputs), case.fn(impl, *inputs), f"{name} L={length}")
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(CASES))
def test_op_compiles_with_dynamic_shapes_over_changing_lengths(name, impl):
    graphs = _run(name, impl, dynamic=True)
    assert 1 <= graphs <= CASES[name].graphs, f"{name}: {graphs} graphs for {len(LENGTHS)} lengths"


@pytest.mark.parametrize("name", ["topk_gather", "merge_unmerge_merge_source", "chunk_causal_attention_lens_tensor",
                                  "gumbel_topk"])
def test_op_recompiles_at_most_once_with_automatic_dynamic_shapes(name):
    """Default dynamic=None: static on the first length, one dynamic recompile on the second."""
    graphs = _run(name, "cpu" if "cpu" in IMPLS else "reference", dynamic=None)
    assert 1 <= graphs <= max(2, CASES[name].graphs), f"{name}: {graphs} graphs"


@pytest.mark.parametrize("name", ["topk_gather", "merge_unmerge_merge_source"])
def test_cheap_ops_under_inductor(name):
    assert _run(name, "cpu" if "cpu" in IMPLS else "reference", dynamic=True, backend="inductor") == 1


@pytest.mark.parametrize("impl", IMPLS)
def test_chunk_lens_tensor_under_compile_gives_gradients_and_checks_values(impl):
    torch._dynamo.reset()
    fn = torch.compile(lambda q, lens: ops.chunk_causal_attention(q, q, q, chunk_lens=lens, impl=impl),
                       fullgraph=True, dynamic=True, backend="aot_eager")
    q = torch.randn(1, 2, 7, 4, dtype=torch.float64, requires_grad=True)
    lens = torch.tensor([3, 1, 3])
    (grad,) = torch.autograd.grad(fn(q, lens).square().sum(), q)
    (expected,) = torch.autograd.grad(ops.chunk_causal_attention(q, q, q, chunk_lens=[3, 1, 3], impl=impl).square()
                                      .sum(), q)
    torch.testing.assert_close(grad, expected)
    with pytest.raises((ValueError, RuntimeError), match="chunk_lens|u0|u1|u2|sum"):
        fn(q.detach(), torch.tensor([3, 1, 2]))  # sums to 6, not Lk = 7


def test_chunk_lens_tensor_compiles_once_per_chunk_count():
    """The lengths' values are read at run time; only their number T is part of the graph."""
    torch._dynamo.reset()
    counters.clear()
    fn = torch.compile(lambda q, lens: ops.chunk_causal_attention(q, q, q, chunk_lens=lens, impl="reference"),
                       fullgraph=True, dynamic=True, backend="aot_eager")
    layouts = ([2, 3, 4], [4, 1, 1], [4, 5], [3, 3], [1, 1, 1, 1])
    for lens in layouts:
        q = _randn(1, 2, sum(lens), 4)
        _assert_same(fn(q, torch.tensor(lens)), ops.chunk_causal_attention(q, q, q, chunk_lens=lens, impl="reference"),
                     str(lens))
    assert counters["stats"]["unique_graphs"] == len({len(lens) for lens in layouts})
