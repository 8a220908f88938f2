"""vidsel: fused kernels for efficient video transformers.

``import vidsel.ops`` for the functional ops; ``python -m vidsel.info`` lists the backends built here.
Importing works with no GPU and with nothing compiled (the PyTorch references are then used).
"""

__version__ = "0.1.0"

from vidsel import _backends  # noqa: F401  (loads the compiled extensions once)
from vidsel._backends import backend_status

__all__ = ["backend_status", "__version__"]
