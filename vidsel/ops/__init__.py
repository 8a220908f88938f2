"""Public functional API of vidsel. Every op takes ``impl="auto"|"reference"|"cpu"|"triton"|"cuda"``."""

from vidsel.ops.bipartite_match import Matching, bipartite_match
from vidsel.ops.merge import merge, merge_source, unmerge

__all__ = ["Matching", "bipartite_match", "merge", "merge_source", "unmerge"]
from vidsel.ops.perturbed_topk import perturbed_topk, perturbed_topk_select  # noqa: E402

__all__ += ["perturbed_topk", "perturbed_topk_select"]
