"""Public functional API of vidsel. Every op takes ``impl="auto"|"reference"|"cpu"|"triton"|"cuda"``.

Token merging (TESTA §3.2, ToMe): bipartite_match, merge, unmerge, merge_source.
Token selection (STTS §3.2-3.3, MIST §3.2): topk_gather, perturbed_topk(_select), gumbel_topk(_select),
    anchor_scores, anchor_select, frame_select.
Attention (Mirasol3B §3.3.1): chunk_causal_attention.
Compressed-domain input (MM-ViT §3.2): compressed_patch_embed.
"""

from vidsel import _moved
from vidsel.ops.anchor_select import anchor_scores, anchor_select
from vidsel.ops.chunk_attention import chunk_causal_attention
from vidsel.ops.compressed_patch_embed import CompressedEmbedParams, compressed_patch_embed
from vidsel.ops.frame_select import frame_select
from vidsel.ops.gumbel_topk import gumbel_topk, gumbel_topk_select
from vidsel.ops.perturbed_topk import perturbed_topk, perturbed_topk_select
from vidsel.ops.token_merging import Matching, bipartite_match, merge, merge_source, unmerge
from vidsel.ops.topk_gather import topk_gather

# Module paths before one stem per op (for one release).
_moved.install("vidsel.ops.bipartite_match", "vidsel.ops.token_merging")
_moved.install("vidsel.ops.merge", "vidsel.ops.token_merging")

__all__ = [
    "Matching",
    "bipartite_match",
    "merge",
    "unmerge",
    "merge_source",
    "topk_gather",
    "perturbed_topk",
    "perturbed_topk_select",
    "gumbel_topk",
    "gumbel_topk_select",
    "anchor_scores",
    "anchor_select",
    "frame_select",
    "chunk_causal_attention",
    "CompressedEmbedParams",
    "compressed_patch_embed",
]
