"""Drop-in nn.Modules built on vidsel.ops."""

from vidsel.nn.byte_tokenizer import ByteTokenizer
from vidsel.nn.combiner import ChunkCausalBlock, TokenLearner, TransformerCombiner, TTMCombiner
from vidsel.nn.chunk_attention import ChunkCache, ChunkCausalSelfAttention
from vidsel.nn.compressed_patch_embed import CompressedPatchEmbed, log_mel_features
from vidsel.nn.mist_selectors import RegionSelector, SegmentSelector
from vidsel.nn.stts_selectors import AnchorSpatialSelector, ScorerNetwork, TemporalSelector
from vidsel.nn.token_merging import TokenMerging, frames_with_cls

__all__ = [
    "AnchorSpatialSelector",
    "ByteTokenizer",
    "ChunkCache",
    "ChunkCausalBlock",
    "ChunkCausalSelfAttention",
    "CompressedPatchEmbed",
    "RegionSelector",
    "ScorerNetwork",
    "SegmentSelector",
    "TTMCombiner",
    "TemporalSelector",
    "TokenLearner",
    "TokenMerging",
    "TransformerCombiner",
    "frames_with_cls",
    "log_mel_features",
]
