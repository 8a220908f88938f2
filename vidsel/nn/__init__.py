"""vidsel.nn"""

from vidsel.nn.token_merging import TokenMerging  # noqa: E402

__all__ = [*globals().get("__all__", []), "TokenMerging"]
