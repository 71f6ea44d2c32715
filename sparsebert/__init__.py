"""sparsebert: CPU inference for sparse (pruned) BERT encoders with Numba CSR/BSR kernels."""

# First: the compiler options (and the environment numba reads when it is imported) are set there.
from .kernels import jit as _jit  # noqa: F401  isort: skip

from .config import BertConfig
from .errors import (
    CheckpointError,
    ConfigError,
    InputError,
    MissingDependencyError,
    SparseBertError,
)

__version__ = "0.1.0"

__all__ = [
    "BertConfig",
    "CheckpointError",
    "ConfigError",
    "InputError",
    "MissingDependencyError",
    "SparseBertError",
    "__version__",
]

from .api import Model, load, pool  # noqa: E402
from .model import BertEncoder, EncoderOutput  # noqa: E402

__all__ += ["BertEncoder", "EncoderOutput", "Model", "load", "pool"]
from .pipelines import pipeline  # noqa: E402

__all__ += ["pipeline"]
