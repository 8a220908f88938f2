"""Deprecated module path: the references it held are vidsel.reference.topk_gather and
vidsel.reference.anchor_select. Kept for one release."""

import warnings

from vidsel.reference.anchor_select import (  # noqa: F401
    anchor_gather,
    anchor_gather_backward,
    anchor_grid,
    anchor_offsets,
    anchor_scores,
    anchor_scores_backward,
    hard_anchor_index,
)
from vidsel.reference.topk_gather import gather_rows, topk_gather, topk_gather_backward, topk_indices  # noqa: F401

scatter_rows = topk_gather_backward  # its name here before

warnings.warn(
    "vidsel.reference.selection is deprecated and will be removed; import vidsel.reference.topk_gather "
    "or vidsel.reference.anchor_select instead",
    DeprecationWarning,
    stacklevel=2,
)
