"""sparsebert: CPU inference for sparse (pruned) BERT encoders with Numba CSR/BSR kernels."""

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
