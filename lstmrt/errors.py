"""The exceptions lstmrt raises.  Each message names the input, node or file at fault."""
from __future__ import annotations


class LstmrtError(Exception):
    """Base class of every lstmrt error."""


class ModelError(LstmrtError, ValueError):
    """The model file is unreadable, corrupt or internally inconsistent."""


class UnsupportedModelError(ModelError):
    """The model is valid ONNX but uses an op, attribute or type this backend cannot run."""

    def __init__(self, message: str, op_type: str | None = None, node: str | None = None):
        super().__init__(message)
        self.op_type, self.node = op_type, node


class OptionError(LstmrtError, ValueError):
    """An InferenceSession option is unknown, out of range, or contradicts another."""


class InputError(LstmrtError, ValueError):
    """A run() feed has a wrong name, type, rank, shape or value."""


class StreamError(LstmrtError, ValueError):
    """The model cannot be streamed, or a stream was used inconsistently."""


class KernelError(LstmrtError, RuntimeError):
    """The C kernel refused a call (a bug in lstmrt if it ever reaches a user)."""
