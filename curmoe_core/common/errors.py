"""Library-specific exceptions.

Every error curmoe raises on bad input names the offending value and the fix. The classes subclass the standard
ones (``ValueError``, ``OSError``, ``ImportError``) so callers that catch those keep working.
"""

from __future__ import annotations

__all__ = [
    "CurmoeError",
    "InvalidInputError",
    "CheckpointError",
    "MissingExtraError",
    "DecodingNotSupportedError",
]


class CurmoeError(Exception):
    """Base class of every error curmoe raises on purpose."""


class InvalidInputError(CurmoeError, ValueError):
    """An argument has a bad value, shape or dtype; the message names it and says how to fix it."""


class CheckpointError(CurmoeError, OSError):
    """A model directory or weight file is missing, truncated, corrupt or does not match its config."""


class MissingExtraError(CurmoeError, ImportError):
    """An optional dependency is not installed; the message gives the ``pip install 'curmoe[extra]'`` line."""


class DecodingNotSupportedError(CurmoeError, RuntimeError):
    """Incremental (cached) decoding was asked of a router that needs the whole sequence (expert_choice)."""


def require(module: str, extra: str) -> object:
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{module!r} is not installed; install it with: pip install 'curmoe[{extra}]'"
        ) from e
