"""Drop-in nn.Modules built on vidsel.ops."""

from vidsel.nn.chunk_attention import ChunkCache, ChunkCausalSelfAttention
from vidsel.nn.compressed_patch_embed import CompressedPatchEmbed, log_mel_features
from vidsel.nn.mist_selectors import RegionSelector, SegmentSelector
from vidsel.nn.stts_selectors import AnchorSpatialSelector, ScorerNetwork, TemporalSelector
from vidsel.nn.token_merging import TokenMerging

__all__ = [
    "AnchorSpatialSelector",
    "ChunkCache",
    "ChunkCausalSelfAttention",
    "CompressedPatchEmbed",
    "RegionSelector",
    "ScorerNetwork",
    "SegmentSelector",
    "TemporalSelector",
    "TokenMerging",
    "log_mel_features",
]
