"""The alternate partition merges exactly the pairs ToMe / TESTA merge, for protected in {0, 1, 2}.

`_tome_match` / `_tome_merge` restate ToMe's bipartite soft matching and merge_wavg from its
description (class_token: the CLS is A's first slot, scored -inf; distill_token: B's first slot is
never a destination), independently of vidsel's reference.
"""

import math

import pytest
import torch

import vidsel.ops as ops
from tests.helpers import assert_close, cpu_backends, device_backends

BACKENDS = cpu_backends()
ON_DEVICES = device_backends()  # (device, impl): CPU tensors here, CUDA tensors on a GPU machine


def _tome_match(metric: torch.Tensor, r: int, class_token: bool, distill_token: bool):
    """ToMe: A = metric[::2], B = metric[1::2]; -> (src A-index, dst B-index, unmerged A-index)."""
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = a @ b.transpose(1, 2)
    if class_token:
        scores[:, 0, :] = -math.inf
    if distill_token:
        scores[:, :, 0] = -math.inf
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)
    src, unmerged = edge_idx[:, :r], edge_idx[:, r:]
    return src, node_idx.gather(1, src), unmerged


def _tome_merge(x: torch.Tensor, size: torch.Tensor, src, dst, unmerged):
    """ToMe merge_wavg, returned as {original position: (row, size)} so the order does not matter."""
    xs, a_size = x * size[..., None], size
    a, b = xs[:, ::2], xs[:, 1::2].clone()
    sa, sb = a_size[:, ::2], a_size[:, 1::2].clone()
    b.scatter_reduce_(1, dst[..., None].expand(-1, -1, x.shape[-1]), a.gather(1, src[..., None].expand(-1, -1, x.shape[-1])), "sum")
    sb.scatter_reduce_(1, dst, sa.gather(1, src), "sum")
    out = []
    for row in range(x.shape[0]):
        tokens = {int(2 * i): (a[row, i] / sa[row, i], sa[row, i]) for i in unmerged[row]}
        tokens.update({2 * j + 1: (b[row, j] / sb[row, j], sb[row, j]) for j in range(b.shape[1])})
        out.append(tokens)
    return out


@pytest.mark.parametrize("device, impl", ON_DEVICES)
@pytest.mark.parametrize("protected", [0, 1, 2])
@pytest.mark.parametrize("n", [10, 11, 197])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_alternate_merges_the_pairs_tome_merges(device, impl, protected, n, dtype):
    gen = torch.Generator(device).manual_seed(n * 3 + protected)
    metric = torch.randn(2, n, 16, generator=gen, dtype=dtype)
    r = (n - protected) // 2 - (1 if n > 11 else 0)
    src, dst, _ = _tome_match(metric.double(), r, protected >= 1, protected == 2)
    m = ops.bipartite_match(metric, r, protected=protected, impl=impl)
    for row in range(2):
        expected = sorted(zip((2 * src[row]).tolist(), (2 * dst[row] + 1).tolist()))
        assert sorted(zip(m.merged_index[row].tolist(), m.merged_into[row].tolist())) == expected
    assert (m.merged_index >= protected).all() and (m.merged_into >= protected).all()


@pytest.mark.parametrize("device, impl", ON_DEVICES)
@pytest.mark.parametrize("protected", [0, 1, 2])
def test_merge_equals_tome_merge_wavg(device, impl, protected):
    gen = torch.Generator(device).manual_seed(7 + protected)
    n, r = 25, 8
    metric = torch.randn(3, n, 12, generator=gen, dtype=torch.float64)
    x = torch.randn(3, n, 5, generator=gen, dtype=torch.float64)
    size = torch.randint(1, 4, (3, n), generator=gen).double()
    tome = _tome_merge(x, size, *_tome_match(metric, r, protected >= 1, protected == 2))
    m = ops.bipartite_match(metric, r, protected=protected, impl=impl)
    merged, merged_size = ops.merge(x, m, size, impl=impl)
    for row in range(3):
        positions = sorted(tome[row])
        assert positions == m.kept_index[row].tolist()
        assert_close(merged[row], torch.stack([tome[row][p][0] for p in positions]), torch.float64)
        assert_close(merged_size[row], torch.stack([tome[row][p][1] for p in positions]), torch.float64)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
@pytest.mark.parametrize("protected", [1, 2, 3])
def test_alternate_after_protected_is_tome_on_the_free_tokens(device, impl, protected):
    """The parity restarted after the protected tokens: ToMe without class token on tokens[protected:]."""
    gen = torch.Generator(device).manual_seed(protected)
    n, r = 30, 9
    metric = torch.randn(2, n, 8, generator=gen, dtype=torch.float64)
    src, dst, _ = _tome_match(metric[:, protected:], r, False, False)
    m = ops.bipartite_match(metric, r, partition="alternate_after_protected", protected=protected, impl=impl)
    for row in range(2):
        expected = sorted(zip((2 * src[row] + protected).tolist(), (2 * dst[row] + 1 + protected).tolist()))
        assert sorted(zip(m.merged_index[row].tolist(), m.merged_into[row].tolist())) == expected


def test_partition_sizes_keep_the_flop_count():
    """ToMe parity swaps |A| and |B| for an odd number of protected tokens: same product, same FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    cases = [(1, "alternate", 98 * 98), (1, "alternate_after_protected", 98 * 98), (2, "alternate", 98 * 97)]
    for protected, partition, pairs in cases:
        with FlopCounterMode(display=False) as counter:
            ops.bipartite_match(torch.randn(2, 197, 64), 16, partition=partition, protected=protected, impl="reference")
        assert counter.get_total_flops() == 2 * 2 * pairs * 64
