"""InferenceSession: onnxruntime's call shape over lstmrt's backends."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .backends import BACKENDS, choose
from .backends.native import NativeOptions
from .errors import InputError, OptionError, UnsupportedModelError
from .model import MEMORY_BYTES, Model, TensorInfo


def _check_value(info: TensorInfo, value) -> np.ndarray:
    """The value, C-contiguous (a strided view is copied, never read as if contiguous), or a
    clear InputError.  The accepted case is tested first in a few attribute reads: it runs for
    every input of every call."""
    if type(value) is np.ndarray and value.dtype == info.dtype and (
            info.shape is None or value.ndim == len(info.shape)):
        fixed = info.fixed_dims
        if fixed is None or fixed[0](value.shape) == fixed[1]:
            if value.flags.c_contiguous:
                return value
    if not isinstance(value, np.ndarray):
        raise InputError(f"input '{info.name}' must be a numpy.ndarray, got {type(value).__name__}")
    if not value.flags.c_contiguous and value.nbytes > MEMORY_BYTES:
        raise InputError(f"input '{info.name}' is a strided view of shape {list(value.shape)}: a contiguous copy "
                         f"would take {value.nbytes / 2**30:,.0f} GiB, more than this machine's memory")
    if value.dtype != info.dtype and value.dtype.newbyteorder("=") == info.dtype:
        value = value.astype(info.dtype)   # the other byte order (e.g. read from a big-endian file)
    if value.dtype != info.dtype:
        raise InputError(f"input '{info.name}' has dtype {value.dtype}; expected {np.dtype(info.dtype)} ({info.type})")
    if info.shape is not None:
        if value.ndim != len(info.shape):
            raise InputError(f"input '{info.name}' has rank {value.ndim} (shape {list(value.shape)}); "
                             f"expected rank {len(info.shape)} {info.shape}")
        for axis, (got, want) in enumerate(zip(value.shape, info.shape)):
            if isinstance(want, int) and want > 0 and got != want:
                raise InputError(f"input '{info.name}' has shape {list(value.shape)}; "
                                 f"dimension {axis} must be {want} (expected {info.shape})")
    return np.ascontiguousarray(value)   # an ndarray subclass, or a strided view, that passed every check


def _options(backend, simd, precision, threads, compiled, providers, sess_options) -> NativeOptions:
    """The native options, or an OptionError for an unknown backend, a value out of range, or
    native options asked of onnxruntime (which would silently ignore them)."""
    if backend not in BACKENDS:
        raise OptionError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    try:
        native = NativeOptions(simd, precision, threads, compiled)
    except ValueError as e:
        raise OptionError(str(e)) from None
    if native != NativeOptions():
        asked = ", ".join(f"{k}={v!r}" for k, v in (("simd", simd), ("precision", precision), ("threads", threads),
                                                   ("compiled", compiled)) if v != getattr(NativeOptions(), k))
        if backend == "onnxruntime" or providers or sess_options is not None:
            chosen = "backend='onnxruntime'" if backend == "onnxruntime" else "providers/sess_options (onnxruntime)"
            raise OptionError(f"only the native backend takes {asked}, but {chosen} was asked for "
                              "(onnxruntime's threads are set with sess_options.intra_op_num_threads)")
    return native


def _has_recurrent_node(graph) -> bool:
    """Any LSTM/GRU/RNN, control-flow bodies included: such a model refuses zero-size feeds
    (onnxruntime aborts the process on them; native has no steps to run)."""
    for node in graph.node:
        if node.op_type in ("LSTM", "GRU", "RNN"):
            return True
        if any(_has_recurrent_node(g) for a in node.attribute for g in ([a.g] if a.type == a.GRAPH else a.graphs)):
            return True
    return False


class InferenceSession:
    """Load a model once; run it whole (`run`) or in chunks (`stream`).

    model: a path, the bytes of an .onnx file, or an onnx.ModelProto.
    sess_options, providers: as onnxruntime takes them, for the onnxruntime backend (either
        implies it under "auto").
    backend: "auto" (onnxruntime on CUDA when a CUDA session loads, else native when it
        supports every node, else onnxruntime on the CPU), "native" or "onnxruntime".
    Native backend only (asking for any of them makes "auto" choose native):
    simd: force a SIMD path ("scalar", "avx2", "avx512"); default: LSTMRT_SIMD or the best.
    precision: "f32" (default), or opt-in "bf16" / "int8" weights for the recurrent products.
    threads: threads per kernel call (default 1): a batch is split by rows, a batch smaller than
        the threads (a single stream) by hidden units; calls too short to gain run on one thread.
    compiled: True (default): each input signature runs as one compiled C program; False walks
        the numpy reference plan op by op (what compiled programs are tested against).
    After loading, `backend` names the backend chosen and `backend_reason` says why.
    """

    def __init__(self, model, sess_options=None, providers=None, *, backend: str = "auto",
                 simd: str | None = None, precision: str = "f32", threads: int = 1, compiled: bool = True):
        native = _options(backend, simd, precision, threads, compiled, providers, sess_options)
        self.model = Model(model)
        self._inputs_by_name = {i.name: i for i in self.model.inputs}
        self._feedable = {**self._inputs_by_name, **{i.name: i for i in self.model.overridable}}
        self._all_outputs = [o.name for o in self.model.outputs]
        self._needs_steps = _has_recurrent_node(self.model.graph)
        self._backend, self.backend_reason = choose(self.model, backend, providers, native, sess_options)
        self.backend = self._backend.name
        self._run_known = getattr(self._backend, "run_known", None)

    def get_providers(self) -> list[str]:
        """onnxruntime's providers in use, or ["lstmrt-native"]."""
        return list(getattr(self._backend, "providers", ["lstmrt-native"]))

    def get_inputs(self) -> list[TensorInfo]:
        return list(self.model.inputs)

    def get_outputs(self) -> list[TensorInfo]:
        return list(self.model.outputs)

    def check_feed(self, input_feed, optional=()) -> dict:
        """The feed, checked against the graph's inputs: names, dtypes, ranks, fixed dims.
        Inputs named in `optional` may be left out."""
        if type(input_feed) is not dict and not isinstance(input_feed, Mapping):
            raise InputError(f"input_feed must be a dict of name -> numpy array, got {type(input_feed).__name__}")
        required, feedable = self._inputs_by_name, self._feedable
        if not feedable.keys() >= input_feed.keys():
            unknown = [n for n in input_feed if n not in feedable]
            overridable = [i.name for i in self.model.overridable]
            raise InputError(f"unknown input name(s) {unknown}; the model's inputs are {list(required)}"
                             + (f" (initializers that may be fed too: {overridable})" if overridable else ""))
        if not required.keys() <= input_feed.keys():
            missing = [n for n in required if n not in input_feed and n not in optional]
            if missing:
                raise InputError(f"missing input(s) {missing}; the model's inputs are {list(required)}")
        checked = {name: _check_value(feedable[name], value) for name, value in input_feed.items()}
        if self._needs_steps:
            for name, value in checked.items():
                if not value.size:
                    raise InputError(f"input '{name}' has shape {list(value.shape)}, with a zero-size dimension; "
                                     "a recurrent model runs on at least one step of at least one sequence")
        return checked

    def _output_names(self, output_names) -> list[str]:
        if output_names is None:
            return self._all_outputs
        if isinstance(output_names, (str, bytes)):   # else iterated letter by letter
            raise InputError(f"output_names must be a list of names, not a string: write [{output_names!r}]")
        try:
            output_names = list(output_names)
        except TypeError:
            raise InputError(f"output_names must be None or a list of names, not {type(output_names).__name__}") from None
        if not output_names:   # onnxruntime's reading of []: every output
            return self._all_outputs
        known = self._all_outputs
        unknown = [n for n in output_names if n not in known]
        if unknown:
            raise InputError(f"unknown output name(s) {unknown}; the model's outputs are {known}")
        return list(output_names)

    def run(self, output_names, input_feed, run_options=None) -> list:
        """Run the whole model: like onnxruntime, returns the outputs named (all if None) in order."""
        del run_options  # accepted for onnxruntime compatibility
        if output_names is not None and type(output_names) is not list or output_names == []:
            output_names = self._output_names(output_names)   # a string, a tuple, []: as onnxruntime reads them
        if self._run_known is not None and type(input_feed) is dict:
            # a signature checked before runs straight away
            result = self._run_known(input_feed, self._all_outputs if output_names is None else output_names)
            if result is not None:
                return result
        return self._backend.run(self.check_feed(input_feed), self._output_names(output_names))

    def profile(self, input_feed: dict, output_names=None, calls: int = 100) -> list:
        """[(instruction, seconds per call)], slowest first: where the compiled program for this
        feed's signature spends its time (native backend)."""
        profile = getattr(self._backend, "profile", None)
        if profile is None:
            raise UnsupportedModelError(f"profiling needs the native backend; this session runs on {self.backend}")
        return profile(self.check_feed(input_feed), self._output_names(output_names), calls)

    def stream(self, state: dict | None = None):
        """A Stream that carries recurrent state across calls; see lstmrt.stream."""
        from .stream import Stream
        return Stream(self, state)

    def stream_group(self, state: dict | None = None):
        """A StreamGroup: many streams advanced by one batched call per step; see lstmrt.stream_group."""
        from .stream_group import StreamGroup
        return StreamGroup(self, state)
