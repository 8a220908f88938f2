"""Drop-in nn.Modules built on vidsel.ops."""

from vidsel.nn.byte_tokenizer import ByteTokenizer
from vidsel.nn.combiner import ChunkCausalBlock, TokenLearner, TransformerCombiner, TTMCombiner
from vidsel.nn.chunk_attention import ChunkCache, ChunkCausalSelfAttention
from vidsel.nn.compressed_patch_embed import CompressedPatchEmbed, log_mel_features
from vidsel.nn.token_merging import TokenMerging

__all__ = ["ChunkCache", "ChunkCausalSelfAttention", "CompressedPatchEmbed", "TokenMerging", "log_mel_features"]
__all__ += ["ByteTokenizer", "ChunkCausalBlock", "TTMCombiner", "TokenLearner", "TransformerCombiner"]
