"""Reference models of the five papers, built on vidsel.ops. See `vidsel.create_model`."""

from vidsel.models._registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
