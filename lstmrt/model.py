"""Loading an ONNX model and describing its interface (file -> model)."""
from __future__ import annotations

import errno
import os
import stat
import threading
from dataclasses import dataclass
from functools import cached_property
from operator import itemgetter

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from .errors import InputError, ModelError
from .locks import new_lock


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):   # not POSIX: numpy's own MemoryError then speaks
        return 1 << 62


# what an array lstmrt makes from a feed's sizes (zero state, a folded constant, a copy) may take:
# past it, the allocation is refused with a message rather than left to overcommit and the OOM killer
MEMORY_BYTES = _memory_bytes()


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output, shaped like onnxruntime's NodeArg (.name .shape .type)."""
    name: str
    shape: list | None      # ints for fixed dims, str for named dims, None for unknown
    type: str               # e.g. "tensor(float)"
    elem_type: int

    @cached_property    # read on every call's feed check
    def dtype(self) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))

    @cached_property
    def fixed_dims(self):
        """(pick, sizes): itemgetter of the fixed (int) dims of a shape, and what it must return;
        None when no dim is fixed.  The feed check's accept test, without a Python loop."""
        axes = [a for a, d in enumerate(self.shape or []) if isinstance(d, int) and d > 0]
        if not axes:
            return None
        pick = itemgetter(*axes)
        return pick, pick(self.shape)


def _tensor_info(value_info) -> TensorInfo:
    t = value_info.type.tensor_type
    try:
        helper.tensor_dtype_to_np_dtype(t.elem_type)
    except KeyError:
        raise ModelError(f"'{value_info.name}' has element type {t.elem_type}, which is no ONNX tensor type") from None
    shape = None
    if t.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    type_name = helper.tensor_dtype_to_string(t.elem_type).replace("TensorProto.", "").lower()
    return TensorInfo(value_info.name, shape, f"tensor({type_name})", t.elem_type)


def _path_problem(path: str) -> str | None:
    """Why `path` cannot be a model file, or None: says which of missing, a folder, a device or
    FIFO, a symlink loop or unreadable it is, rather than "does not exist" for all of them."""
    try:
        info = os.stat(path)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return f"model file '{path}' does not exist"
        return f"model file '{path}' cannot be opened: {e.strerror}"
    if stat.S_ISDIR(info.st_mode):
        return f"'{path}' is a folder, not an .onnx model file"
    if not stat.S_ISREG(info.st_mode):
        return f"'{path}' is not a regular file (a device, FIFO or socket), so not an .onnx model file"
    if info.st_size == 0:
        return f"model file '{path}' is empty"
    return None


def _read(source) -> tuple[onnx.ModelProto, str]:
    if isinstance(source, onnx.ModelProto):
        return source, "<ModelProto>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise ModelError("model bytes are empty")
        try:
            return onnx.load_from_string(bytes(source)), "<bytes>"
        except Exception as e:   # protobuf's DecodeError, onnx's ValueError/RuntimeError, ...
            raise ModelError(f"model bytes are not a valid ONNX model (corrupt or truncated): {e}") from None
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        problem = _path_problem(path)
        if problem:
            raise ModelError(problem)
        try:
            return onnx.load(path), path
        except (DecodeError, ValueError, RuntimeError, OSError) as e:
            raise ModelError(f"'{path}' is not a valid ONNX model (corrupt or truncated): {e}") from None
        except onnx.checker.ValidationError as e:   # external data refused: outside the folder, absolute, missing
            raise ModelError(f"'{path}': its external data cannot be read: {e}") from None
    raise ModelError(f"model must be a path, bytes or onnx.ModelProto, not {type(source).__name__}")


def _check(proto: onnx.ModelProto, origin: str) -> None:
    """onnx's checker, minus its demand that graph inputs/outputs declare a shape
    (onnxruntime runs such models; so do we)."""
    shapeless = [v.type.tensor_type for v in [*proto.graph.input, *proto.graph.output]
                 if v.type.HasField("tensor_type") and not v.type.tensor_type.HasField("shape")]
    for t in shapeless:
        t.shape.SetInParent()
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as e:
        raise ModelError(f"'{origin}' is not a valid ONNX model: {str(e).strip().splitlines()[0]}") from None
    finally:
        for t in shapeless:
            t.ClearField("shape")


def _initializer(tensor, origin: str) -> np.ndarray:
    try:
        return numpy_helper.to_array(tensor)
    except Exception as e:   # raw_data of the wrong size, an unknown type, unreadable external data
        raise ModelError(f"initializer '{tensor.name}' of '{origin}' cannot be read: {e}") from None


def _check_strings(graph) -> None:
    """String attributes must be UTF-8 (every reader of the model decodes them), bodies included."""
    for index, node in enumerate(graph.node):
        for attr in node.attribute:
            for value in ([attr.s] if attr.type == attr.STRING else attr.strings if attr.type == attr.STRINGS else []):
                try:
                    value.decode()
                except UnicodeDecodeError:
                    raise ModelError(f"node '{node.name or index}' ({node.op_type}): attribute '{attr.name}' "
                                     f"is not UTF-8 text: {value[:40]!r}") from None
            if attr.type == attr.GRAPH:
                _check_strings(attr.g)
            for body in attr.graphs:
                _check_strings(body)


class Model:
    """A checked ONNX model: its graph, constants and interface."""

    def __init__(self, source):
        # held while the proto is walked after loading (streams made in threads): protobuf's
        # C extension crashed on threads reading one message at once (a wrapper freed twice)
        self._lock = new_lock(self, threading.RLock)
        self.proto, self.origin = _read(source)
        _check(self.proto, self.origin)
        graph = self.proto.graph
        self.graph = graph
        _check_strings(graph)
        self.initializers = {t.name: _initializer(t, self.origin) for t in graph.initializer}
        self.inputs = [_tensor_info(v) for v in graph.input if v.name not in self.initializers]
        # graph inputs that are also initializers: a feed may replace the initializer, as
        # onnxruntime allows; not required, and not listed among the inputs (onnxruntime neither)
        self.overridable = [_tensor_info(v) for v in graph.input if v.name in self.initializers]
        self.outputs = [_tensor_info(v) for v in graph.output]
        self.opset = next((o.version for o in self.proto.opset_import if o.domain in ("", "ai.onnx")), None)
        if self.opset is None:
            raise ModelError(f"'{self.origin}' imports no version of the default ONNX domain")
        self.metadata = {p.key: p.value for p in self.proto.metadata_props}

    def input(self, name: str) -> TensorInfo:
        return next(i for i in self.inputs if i.name == name)

    def output(self, name: str) -> TensorInfo:
        return next(o for o in self.outputs if o.name == name)

    def producers(self) -> dict:
        """value name -> (node, output index)"""
        return {out: (node, i) for node in self.graph.node for i, out in enumerate(node.output) if out}

    def consumers(self) -> dict:
        """value name -> [(node, input index)]"""
        users: dict = {}
        for node in self.graph.node:
            for i, name in enumerate(node.input):
                if name:
                    users.setdefault(name, []).append((node, i))
        return users


def zeros_for(info: TensorInfo, dims: dict) -> np.ndarray | None:
    """Zeros shaped like `info`, resolving named dims from `dims`; None if a dim is unknown."""
    if info.shape is None:
        return None
    shape = []
    for d in info.shape:
        if isinstance(d, int) and d > 0:
            shape.append(d)
        elif isinstance(d, str) and d in dims:
            shape.append(dims[d])
        else:
            return None
    if np.prod(shape, dtype=float) * info.dtype.itemsize > MEMORY_BYTES:
        raise InputError(f"the zero state '{info.name}' for this feed would be {shape} ({info.dtype}), "
                         "more than this machine's memory")
    return np.zeros(shape, dtype=info.dtype)
