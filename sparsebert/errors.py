"""The exceptions a sparsebert user can see.

Every error raised on a public path is a `SparseBertError`. Each subclass also derives from the
builtin exception a caller would naturally catch (`ValueError`, `ImportError`), so existing
`except ValueError` code keeps working. Messages name the bad value, what was expected and the fix.
"""


class SparseBertError(Exception):
    """Base class of every error sparsebert raises on purpose."""


class ConfigError(SparseBertError, ValueError):
    """A model configuration (config.json or keyword arguments) is invalid or inconsistent."""


class CheckpointError(SparseBertError, ValueError):
    """A checkpoint file or folder is missing, malformed, or does not hold the expected tensors."""


class InputError(SparseBertError, ValueError):
    """Inputs to a model call (token ids, masks, texts) are malformed or out of range."""


class MissingDependencyError(SparseBertError, ImportError):
    """An optional package is needed for this operation; the message gives the pip command."""


def require(module: str, pip_name: str | None = None, why: str = ""):
    """Import an optional dependency or raise MissingDependencyError with the install line."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pip_name = pip_name or module
        reason = f" ({why})" if why else ""
        raise MissingDependencyError(
            f"the optional package {module!r} is needed{reason}; install it with "
            f"`pip install {pip_name}`"
        ) from exc
