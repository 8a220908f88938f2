"""chunk_causal_attention (Mirasol3B eq. 8): every backend against dense-mask SDPA, gradients, opcheck,
torch.compile, FLOP formula, and argument validation."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import vidsel.ops as ops
from tests.helpers import DTYPES, assert_close, cpu_backends, device_backends, non_contiguous
from vidsel.ops._dispatch import supported
from vidsel.ops.chunk_attention import (
    CHUNK_ATTENTION,
    CHUNK_ATTENTION_BACKWARD,
    _chunk_attention,
    _resolve_chunk_lens,
)
from vidsel.reference.chunk_attention import block_causal_mask, chunk_layout

BACKENDS = cpu_backends(supported(CHUNK_ATTENTION, CHUNK_ATTENTION_BACKWARD))
ON_DEVICES = device_backends(supported(CHUNK_ATTENTION, CHUNK_ATTENTION_BACKWARD))  # (device, impl)
# (device, impl) of every compiled backend: CPU tensors here, CUDA tensors on a GPU machine
COMPILED_ON_DEVICES = device_backends(supported(CHUNK_ATTENTION, CHUNK_ATTENTION_BACKWARD), reference=False)

# (B, H, Lq, Lk, Dh, chunking): L not a multiple of the chunk or tile, Dh 40 and 64, Lq < Lk, B=1, H=1,
# variable chunks with a length-1 chunk.
CASES = [
    (2, 3, 37, 37, 40, dict(chunk_size=8)),
    (1, 1, 45, 45, 64, dict(chunk_lens=[20, 1, 24])),
    (2, 2, 13, 50, 40, dict(chunk_size=16)),
    (1, 2, 21, 33, 64, dict(chunk_lens=[1, 9, 1, 17, 5])),
]


def _dense_sdpa(q, k, v, chunk_lens, key_bias=None, scale=None):
    """Peers' formulation: SDPA with the dense (Lq, Lk) eq. 8 mask, in float64."""
    mask = block_causal_mask(chunk_lens, q.shape[2])
    q, k, v = (t.to(torch.float64) for t in (q, k, v))
    if key_bias is not None:
        mask = torch.where(mask, key_bias.to(torch.float64)[:, None, None, :], float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _inputs(batch, heads, lq, lk, dim, dtype=torch.float32, bias=True):
    q = torch.randn(batch, heads, lq, dim, dtype=dtype)
    k = torch.randn(batch, heads, lk, dim, dtype=dtype)
    v = torch.randn(batch, heads, lk, dim, dtype=dtype)
    key_bias = torch.rand(batch, lk, dtype=dtype).add(0.5).log() if bias else None  # log(size), proportional attn
    return q, k, v, key_bias


@pytest.mark.parametrize("device, impl", ON_DEVICES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[:5]}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_dense_mask_sdpa(device, impl, case, dtype):
    *shape, chunking = case
    q, k, v, key_bias = _inputs(*shape, dtype=dtype)
    lens = _resolve_chunk_lens(chunking.get("chunk_size"), chunking.get("chunk_lens"), k.shape[2])
    out = ops.chunk_causal_attention(q, k, v, key_bias=key_bias, impl=impl, **chunking)
    assert out.dtype == dtype and out.shape == q.shape
    assert_close(out.float(), _dense_sdpa(q, k, v, lens, key_bias).float(), dtype=dtype)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_without_bias_non_contiguous_and_custom_scale(device, impl):
    q, k, v, _ = _inputs(2, 2, 19, 19, 40, bias=False)
    out = ops.chunk_causal_attention(non_contiguous(q), non_contiguous(k), v, chunk_size=6, scale=0.3, impl=impl)
    assert_close(out.double(), _dense_sdpa(q, k, v, [6, 6, 6, 1], scale=0.3), dtype=torch.float32)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_strided_views_of_a_fused_qkv(device, impl):
    """Heads split from a fused (B, L, 3, H, Dh) projection, queries a slice of the last positions."""
    qkv = torch.randn(2, 30, 3, 2, 40).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0][:, :, 18:], qkv[1], qkv[2]
    out = ops.chunk_causal_attention(q, k, v, chunk_lens=[10, 1, 7, 12], impl=impl)
    assert_close(out.double(), _dense_sdpa(q, k, v, [10, 1, 7, 12]), dtype=torch.float32)


def test_cpu_tiles_longer_than_a_tile():
    """Sequences longer than the CPU query tile (256) and key block (512), chunks not tile-aligned."""
    if "cpu" not in BACKENDS:
        pytest.skip("cpu backend not built")
    q, k, v, key_bias = _inputs(1, 2, 600, 700, 64)
    lens = [300, 1, 250, 149]
    out = ops.chunk_causal_attention(q, k, v, chunk_lens=lens, key_bias=key_bias, impl="cpu")
    assert_close(out.double(), _dense_sdpa(q, k, v, lens, key_bias), dtype=torch.float32)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_degenerate_chunkings(device, impl):
    """One chunk is full attention; chunk_size=1 is causal attention."""
    q, k, v, _ = _inputs(1, 2, 23, 23, 40, bias=False)
    full = ops.chunk_causal_attention(q, k, v, chunk_size=23, impl=impl)
    assert_close(full, F.scaled_dot_product_attention(q, k, v))
    causal = ops.chunk_causal_attention(q, k, v, chunk_size=1, impl=impl)
    assert_close(causal, F.scaled_dot_product_attention(q, k, v, is_causal=True))


# The second case (one head, chunks longer than a tile row group) splits the CPU backward over query tiles.
@pytest.mark.parametrize("device, impl", ON_DEVICES)
@pytest.mark.parametrize("shape, lens", [((2, 2, 17, 29, 40), [7, 1, 12, 9]), ((1, 1, 100, 100, 16), [40, 1, 59])])
def test_gradients_match_dense_sdpa(device, impl, shape, lens):
    q, k, v, key_bias = _inputs(*shape)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, key_bias)]
    out = ops.chunk_causal_attention(*leaves[:3], chunk_lens=lens, key_bias=leaves[3], impl=impl)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, grad_out)
    ref_leaves = [t.double().requires_grad_() for t in (q, k, v, key_bias)]
    expected = torch.autograd.grad(_dense_sdpa(*ref_leaves[:3], lens, ref_leaves[3]), ref_leaves, grad_out.double())
    for got, want in zip(grads, expected):
        assert_close(got.double(), want, dtype=torch.float32, scale=10)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_gradcheck_float64(device, impl):
    q, k, v, key_bias = (t.requires_grad_() for t in _inputs(1, 2, 4, 6, 3, dtype=torch.float64))

    def fn(q, k, v, key_bias):
        return ops.chunk_causal_attention(q, k, v, chunk_lens=[2, 1, 3], key_bias=key_bias, impl=impl)

    # The interpreted Triton kernels are slow: check random Jacobian projections (fast_mode) there.
    assert torch.autograd.gradcheck(fn, (q, k, v, key_bias), fast_mode=impl == "triton")


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_opcheck(device, impl):
    q, k, v, key_bias = (t.requires_grad_() for t in _inputs(1, 2, 6, 9, 16))
    torch.library.opcheck(_chunk_attention, (q, k, v, [4, 1, 4], key_bias, 0.25, impl))
    torch.library.opcheck(_chunk_attention, (q, k, v, [9], None, 0.25, impl))


def test_compile_matches_eager():
    impl = "cpu" if "cpu" in BACKENDS else "reference"
    q, k, v, key_bias = _inputs(1, 2, 20, 20, 16)

    def fn(q, k, v, key_bias):
        return ops.chunk_causal_attention(q, k, v, chunk_size=6, key_bias=key_bias, impl=impl)

    compiled = torch.compile(fn, fullgraph=True)
    assert_close(compiled(q, k, v, key_bias), fn(q, k, v, key_bias))


def test_flop_formula_counts_only_visible_pairs():
    q, k, v, _ = _inputs(2, 3, 11, 20, 8, bias=False)
    lens = [5, 1, 8, 6]
    with FlopCounterMode(display=False) as counter:
        ops.chunk_causal_attention(q, k, v, chunk_lens=lens, impl="reference")
    visible = int(block_causal_mask(lens, 11).sum())
    assert counter.get_total_flops() == 4 * 2 * 3 * 8 * visible


def test_chunk_lens_tensor_is_accepted():
    q, k, v, _ = _inputs(1, 1, 9, 9, 16, bias=False)
    out = ops.chunk_causal_attention(q, k, v, chunk_lens=torch.tensor([4, 5]), impl="reference")
    assert_close(out, ops.chunk_causal_attention(q, k, v, chunk_lens=[4, 5], impl="reference"))


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(chunk_lens=[4, 4]), ValueError, "chunk_lens"),
        (dict(chunk_lens=[5, 0, 4]), ValueError, "chunk_lens"),
        (dict(chunk_lens=torch.tensor([4.0, 5.0])), ValueError, "chunk_lens"),
        (dict(chunk_lens=[4.0, 5.0]), TypeError, "chunk_lens"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(chunk_size=-3), ValueError, "chunk_size"),
        (dict(chunk_size=2.5), TypeError, "chunk_size"),
        (dict(), ValueError, "chunk_size"),
        (dict(chunk_size=3, chunk_lens=[9]), ValueError, "chunk_size"),
        (dict(chunk_size=3, key_bias=torch.zeros(2, 8)), ValueError, "key_bias"),
        (dict(chunk_size=3, key_bias=torch.zeros(2, 9, dtype=torch.float64)), TypeError, "key_bias"),
        (dict(chunk_size=3, scale="big"), TypeError, "scale"),
        (dict(chunk_size=3, impl="gpu"), ValueError, "impl"),
    ],
)
def test_bad_arguments(kwargs, error, pattern):
    q, k, v, _ = _inputs(2, 2, 9, 9, 16, bias=False)
    with pytest.raises(error, match=pattern):
        ops.chunk_causal_attention(q, k, v, **kwargs)


@pytest.mark.parametrize(
    "tensors, error, pattern",
    [
        (lambda q, k, v: (q, k[..., :8], v[..., :8]), ValueError, "k must have shape"),
        (lambda q, k, v: (q, k, v.double()), TypeError, "v must have"),
        (lambda q, k, v: (q.int(), k, v), TypeError, "q must be a floating"),
        (lambda q, k, v: (q, k.to("meta"), v), ValueError, "k is on"),
        (lambda q, k, v: (q[0], k, v), ValueError, "q must have 4"),
        (lambda q, k, v: (q, k[:, :, :5], v[:, :, :5]), ValueError, "Lq"),
        (lambda q, k, v: (q, k, v[:, :, :8]), ValueError, "v must have shape"),
    ],
)
def test_bad_tensors(tensors, error, pattern):
    q, k, v, _ = _inputs(2, 2, 9, 9, 16, bias=False)
    with pytest.raises(error, match=pattern):
        ops.chunk_causal_attention(*tensors(q, k, v), chunk_size=3)


@pytest.mark.parametrize("chunk_lens, lq", [([4, 1, 4], 9), ([4, 1, 4], 3), ([1, 9, 1, 17, 5], 21), ([7], 7), ([3, 3], 0)])
def test_chunk_layout_is_the_mask_of_eq8(chunk_lens, lq):
    key_end, first_row = chunk_layout(chunk_lens, lq)
    lk = sum(chunk_lens)
    mask = block_causal_mask(chunk_lens, lq)  # built position by position from the chunk of each query
    chunk_of = [c for c, n in enumerate(chunk_lens) for _ in range(n)]
    for i in range(lq):
        visible = [j for j in range(lk) if chunk_of[j] <= chunk_of[lk - lq + i]]
        assert mask[i].nonzero().flatten().tolist() == visible
        assert int(key_end[i]) == max(visible) + 1
    for j in range(lk):
        rows = [i for i in range(lq) if chunk_of[j] <= chunk_of[lk - lq + i]]
        assert int(first_row[j]) == (rows[0] if rows else 0)
    assert key_end.dtype == first_row.dtype == torch.int64
    assert key_end.shape == (lq,) and first_row.shape == (lk,)


def _poisoned(dtype):
    """Inputs crossing the interpreter tiles (16) with chunk ends inside tiles, Lq < Lk, and non-finite
    values: a NaN key (b0 h0, chunk 2), +inf / -inf values (b0 h1, last chunk), a NaN value in the
    length-1 chunk (b1 h0), a NaN query row (b1 h1, chunk 0) and a NaN key bias (b1, last key)."""
    lens = [13, 1, 9, 22]
    torch.manual_seed(3)
    q, k, v, key_bias = _inputs(2, 2, 37, 45, 24, dtype=dtype)
    clean = (q.clone(), k.clone(), v.clone(), key_bias.clone())
    k[0, 0, 20, 3] = float("nan")
    v[0, 1, 30, 5], v[0, 1, 40, 7] = float("inf"), float("-inf")
    v[1, 0, 13, 2] = float("nan")
    q[1, 1, 3] = float("nan")
    key_bias[1, 44] = float("nan")
    return lens, clean, (q, k, v, key_bias)


def _forward_and_grads(impl, lens, tensors, grad_out):
    leaves = [t.clone().requires_grad_() for t in tensors]
    out = ops.chunk_causal_attention(*leaves[:3], chunk_lens=lens, key_bias=leaves[3], impl=impl)
    return (out, *torch.autograd.grad(out, leaves, grad_out))


@pytest.mark.parametrize("device, impl", COMPILED_ON_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_non_finite_inputs_propagate_as_in_the_reference(device, impl, dtype):
    """Output and all gradients against the reference: same NaN / inf positions, close elsewhere."""
    lens, _, poisoned = _poisoned(dtype)
    grad_out = torch.randn(2, 2, 37, 24, dtype=dtype)
    grad_out[0, 0, 30, 1] = float("nan")  # a NaN gradient of a last-chunk query
    got = _forward_and_grads(impl, lens, poisoned, grad_out)
    want = _forward_and_grads("reference", lens, poisoned, grad_out)
    tol = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 3e-2}[dtype]
    for name, a, b in zip(("out", "grad_q", "grad_k", "grad_v", "grad_bias"), got, want):
        assert torch.equal(a.isnan(), b.isnan()), name
        assert torch.equal(a == float("inf"), b == float("inf")), name
        assert torch.equal(a == float("-inf"), b == float("-inf")), name
        finite = torch.isfinite(b)
        torch.testing.assert_close(a[finite].double(), b[finite].double(), atol=tol, rtol=tol, msg=name)


# One poison at a time, so that most results stay out of its reach (positions: query row i sits at 8 + i).
POISONS = {
    "key": lambda q, k, v, bias, g: k[:, :, 20, 3].fill_(float("nan")),  # chunk 2: rows >= 6 see it
    "values": lambda q, k, v, bias, g: (v[:, :, 30, 5].fill_(float("inf")), v[:, :, 40, 7].fill_(float("-inf"))),
    "short-chunk value": lambda q, k, v, bias, g: v[:, :, 13, 2].fill_(float("nan")),  # the length-1 chunk
    "bias": lambda q, k, v, bias, g: bias[:, 44].fill_(float("nan")),
    "query": lambda q, k, v, bias, g: (q[:, :, 3].fill_(float("nan")), g[:, :, 3].fill_(float("nan"))),
    "grad": lambda q, k, v, bias, g: g[:, :, 10, 4].fill_(float("inf")),  # row 10 sees keys 0..22
}


@pytest.mark.parametrize("device, impl", COMPILED_ON_DEVICES)
@pytest.mark.parametrize("poison, dtype", [(name, (torch.float32, torch.bfloat16, torch.float64)[n % 3])
                                           for n, name in enumerate(POISONS)])
def test_hidden_non_finite_inputs_leave_every_other_result_bit_identical(device, impl, poison, dtype):
    """Every query's output / gradient row and key's gradient row out of the poison's reach (the
    reference's row unchanged and finite) keeps the clean run's bits: forward, grad q, k, v, key bias."""
    lens, clean, _ = _poisoned(dtype)
    clean = [t[:1] for t in clean]
    grad_out = torch.randn(1, 2, 37, 24, dtype=dtype)
    dirty = [t.clone() for t in (*clean, grad_out)]
    POISONS[poison](*dirty)
    results = {}
    for backend in ("reference", impl):
        results[backend] = [_forward_and_grads(backend, lens, clean, grad_out),
                            _forward_and_grads(backend, lens, dirty[:4], dirty[4])]
    (ref_clean, ref_dirty), (got_clean, got_dirty) = results["reference"], results[impl]
    reached = kept = 0
    for name, rc, rd, gc, gd in zip(("out", "grad_q", "grad_k", "grad_v", "grad_bias"), ref_clean, ref_dirty,
                                    got_clean, got_dirty):
        untouched = torch.isfinite(rd) & (rd == rc)
        if untouched.dim() == 4:  # a query's / key's row is out of reach only if all of it is
            untouched = untouched.all(-1, keepdim=True).expand_as(untouched)
        reached, kept = reached + int((~untouched).sum()), kept + int(untouched.sum())
        assert torch.equal(gd[untouched], gc[untouched]), name
    assert reached and kept, (reached, kept)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_gradcheck_float64_across_tiles(device, impl):
    """Odd sizes spanning several interpreter tiles, a chunk end inside a tile."""
    q, k, v, key_bias = (t.requires_grad_() for t in _inputs(1, 1, 19, 21, 3, dtype=torch.float64))

    def fn(q, k, v, key_bias):
        return ops.chunk_causal_attention(q, k, v, chunk_lens=[9, 1, 11], key_bias=key_bias, impl=impl)

    assert torch.autograd.gradcheck(fn, (q, k, v, key_bias), fast_mode=True)  # random Jacobian projections
