"""vidsel.nn.ChunkCausalSelfAttention: streaming one chunk at a time equals the full pass (Mirasol3B §3.4)."""

import pytest
import torch

from tests.helpers import assert_close, device_backends
from vidsel.nn import ChunkCausalSelfAttention
from vidsel.ops._dispatch import supported
from vidsel.ops.chunk_attention import CHUNK_ATTENTION, CHUNK_ATTENTION_BACKWARD

SUPPORTED_IMPLS = supported(CHUNK_ATTENTION, CHUNK_ATTENTION_BACKWARD)
ON_DEVICES = device_backends(SUPPORTED_IMPLS)  # (device, impl): CPU tensors here, CUDA on a GPU machine


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_streaming_steps_equal_full_pass(device, impl):
    layer = ChunkCausalSelfAttention(dim=32, heads=2, chunk_size=5, impl=impl)
    x = torch.randn(2, 23, 32)
    full = layer(x)
    cache, pieces = None, []
    for start in range(0, 23, 5):
        y, cache = layer.step(x[:, start : start + 5], cache)
        pieces.append(y)
    assert cache.chunk_lens == [5, 5, 5, 5, 3]
    assert_close(torch.cat(pieces, dim=1), full)


def test_future_chunks_do_not_change_the_past():
    layer = ChunkCausalSelfAttention(dim=16, heads=4, chunk_size=4)
    x = torch.randn(1, 12, 16)
    changed = x.clone()
    changed[:, 8:] = torch.randn(1, 4, 16)
    assert_close(layer(changed)[:, :8], layer(x)[:, :8])
    assert not torch.allclose(layer(changed)[:, 8:], layer(x)[:, 8:])


@pytest.mark.parametrize("device, impl", device_backends(SUPPORTED_IMPLS, reference=False))
def test_gradients_through_the_layer_match_the_reference(device, impl):
    """Strided q/k/v views of the fused projection, variable chunks and a key bias, end to end."""
    layer = ChunkCausalSelfAttention(dim=16, heads=2, chunk_size=4, impl=impl)
    x = torch.randn(2, 10, 16)
    key_bias = torch.rand(2, 10).log()
    grads = {}
    for name in (impl, "reference"):
        layer.impl = name
        inputs = [x.clone().requires_grad_(), key_bias.clone().requires_grad_()]
        out = layer(inputs[0], chunk_lens=[3, 1, 6], key_bias=inputs[1])
        grads[name] = torch.autograd.grad(out.square().sum(), inputs + [layer.qkv.weight])
    for got, want in zip(grads[impl], grads["reference"]):
        assert_close(got, want, scale=10)


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        ChunkCausalSelfAttention(dim=10, heads=3, chunk_size=2)
    layer = ChunkCausalSelfAttention(dim=8, heads=2, chunk_size=2)
    with pytest.raises(ValueError, match="x must have shape"):
        layer(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="x_chunk"):
        layer.step(torch.randn(2, 0, 8))
