"""vidsel: fused kernels for efficient video transformers.

``import vidsel.ops`` for the functional ops; ``python -m vidsel.info`` lists the backends built here.
Importing works with no GPU and with nothing compiled (the PyTorch references are then used).
"""

__version__ = "0.1.0"

from vidsel import _backends  # noqa: F401  (loads the compiled extensions once)
from vidsel._backends import backend_status

__all__ = ["backend_status", "create_model", "list_models", "__version__"]


def create_model(name: str, **overrides):
    """Builds a registered reference model (see vidsel.models); overrides replace config fields."""
    from vidsel.models import create_model as _create

    return _create(name, **overrides)


def list_models(pattern: str = "*") -> list[str]:
    from vidsel.models import list_models as _list

    return _list(pattern)
