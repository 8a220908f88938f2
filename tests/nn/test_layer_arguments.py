"""Layer constructors reject bad sizes with a ValueError/TypeError naming the argument."""

import pytest

from vidsel.nn import ChunkCausalSelfAttention


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(dim=8, heads=0, chunk_size=2), ValueError, "heads must be >= 1"),
        (dict(dim=8, heads=-2, chunk_size=2), ValueError, "heads must be >= 1"),
        (dict(dim=8, heads=2, chunk_size=None), TypeError, "chunk_size must be an int"),
        (dict(dim=8, heads=2, chunk_size=0), ValueError, "chunk_size must be >= 1"),
        (dict(dim=8, heads=3, chunk_size=2), ValueError, "divisible"),
        (dict(dim=8.0, heads=2, chunk_size=2), TypeError, "dim must be an int"),
    ],
)
def test_chunk_causal_self_attention_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ChunkCausalSelfAttention(**kwargs)
