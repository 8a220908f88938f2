"""Public functional API of vidsel. Every op takes ``impl="auto"|"reference"|"cpu"|"triton"|"cuda"``."""

from vidsel.ops.bipartite_match import Matching, bipartite_match
from vidsel.ops.merge import merge, merge_source, unmerge

__all__ = ["Matching", "bipartite_match", "merge", "merge_source", "unmerge"]
from vidsel.ops.perturbed_topk import perturbed_topk, perturbed_topk_select  # noqa: E402

__all__ += ["perturbed_topk", "perturbed_topk_select"]
from vidsel.ops.topk_gather import topk_gather  # noqa: E402
from vidsel.ops.anchor_select import anchor_scores, anchor_select  # noqa: E402
from vidsel.ops.frame_select import frame_select  # noqa: E402

__all__ += ["topk_gather", "anchor_scores", "anchor_select", "frame_select"]
from vidsel.ops.gumbel_topk import gumbel_topk, gumbel_topk_select  # noqa: E402

__all__ += ["gumbel_topk", "gumbel_topk_select"]
from vidsel.ops.chunk_attention import chunk_causal_attention  # noqa: E402

__all__ += ["chunk_causal_attention"]
from vidsel.ops.compressed_patch_embed import CompressedEmbedParams, compressed_patch_embed  # noqa: E402

__all__ += ["CompressedEmbedParams", "compressed_patch_embed"]
