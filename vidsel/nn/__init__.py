"""Drop-in nn.Modules built on vidsel.ops."""

from vidsel.nn.chunk_attention import ChunkCache, ChunkCausalSelfAttention
from vidsel.nn.compressed_patch_embed import CompressedPatchEmbed, log_mel_features
from vidsel.nn.mist_selectors import RegionSelector, SegmentSelector
from vidsel.nn.token_merging import TokenMerging

__all__ = [
    "ChunkCache",
    "ChunkCausalSelfAttention",
    "CompressedPatchEmbed",
    "RegionSelector",
    "SegmentSelector",
    "TokenMerging",
    "log_mel_features",
]
