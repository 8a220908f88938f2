"""vidsel.nn"""

from vidsel.nn.token_merging import TokenMerging  # noqa: E402

__all__ = [*globals().get("__all__", []), "TokenMerging"]
from vidsel.nn.chunk_attention import ChunkCache, ChunkCausalSelfAttention  # noqa: E402

__all__ = [*globals().get("__all__", []), "ChunkCache", "ChunkCausalSelfAttention"]
from vidsel.nn.compressed_patch_embed import CompressedPatchEmbed, log_mel_features  # noqa: E402

__all__ = [*globals().get("__all__", []), "CompressedPatchEmbed", "log_mel_features"]
