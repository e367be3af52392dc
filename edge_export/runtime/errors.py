"""The device runtime's errors: a small hierarchy of ValueErrors.

The runtime cannot import ``fedge.shared.errors`` (a device runs it without the
rest of fedge), so it has its own; ``fedge.shared.preprocessing`` turns an
:class:`InputError` from the shared encoder into fedge's ``DataError``.
"""

from __future__ import annotations


class EdgeError(ValueError):
    """Base class of the runtime's errors (a ValueError, like fedge's own)."""


class ModelFileError(EdgeError):
    """The model file is missing, not ONNX, lacks fedge metadata or fails its hash."""


class InputError(EdgeError):
    """Input data does not match what the model expects."""


class SignatureError(ModelFileError):
    """The manifest's signature is missing, unreadable or not the trusted key's."""
