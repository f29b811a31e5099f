"""Thin Python face of the C kernel (csrc/): pack one direction's weights, run it.

Knows nothing of ONNX graphs; lstmrt/ops/recurrent.py maps ONNX nodes onto it.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import threading
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError, KernelError, UnsupportedModelError


def _load_kernel_module():
    # LSTMRT_KERNEL_MODULE points at an alternative build (e.g. under AddressSanitizer)
    path = os.environ.get("LSTMRT_KERNEL_MODULE")
    if not path:
        from . import _kernel
        return _kernel
    spec = importlib.util.spec_from_file_location("lstmrt._kernel", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_mod = _load_kernel_module()
ffi, lib = _mod.ffi, _mod.lib

CELLS = {"RNN": lib.LRT_RNN, "GRU": lib.LRT_GRU, "LSTM": lib.LRT_LSTM}
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
SIMD_PATHS = {"scalar": lib.LRT_SIMD_SCALAR, "avx2": lib.LRT_SIMD_AVX2, "avx512": lib.LRT_SIMD_AVX512}
# weight-product precision (opt-in; see csrc/lstmrt.h): state, activations and sums stay float32
# the kernel's one dtype; numpy's builtin dtypes are singletons, so `x.dtype is F32` is the cheap test
F32 = np.dtype(np.float32)
PRECISIONS = {"f32": lib.LRT_PREC_F32, "bf16": lib.LRT_PREC_BF16, "int8": lib.LRT_PREC_INT8}
MAX_THREADS = lib.LRT_MAX_THREADS
MAX_DIM = 1 << 24       # csrc/lstmrt.c LRT_MAX_DIM: batch and steps of one call
INT8_MAX_SIZE = 65536   # csrc/lstmrt.h: int8 packs input and hidden sizes up to this
# lower-case ONNX activation name -> kernel enum
ACTIVATIONS = {
    "sigmoid": lib.LRT_ACT_SIGMOID, "tanh": lib.LRT_ACT_TANH, "relu": lib.LRT_ACT_RELU,
    "affine": lib.LRT_ACT_AFFINE, "leakyrelu": lib.LRT_ACT_LEAKYRELU,
    "thresholdedrelu": lib.LRT_ACT_THRESHOLDEDRELU, "scaledtanh": lib.LRT_ACT_SCALEDTANH,
    "hardsigmoid": lib.LRT_ACT_HARDSIGMOID, "elu": lib.LRT_ACT_ELU,
    "softsign": lib.LRT_ACT_SOFTSIGN, "softplus": lib.LRT_ACT_SOFTPLUS,
}


def available_simd_paths() -> list[str]:
    """SIMD paths this CPU and build can run, best last."""
    return [name for name, code in SIMD_PATHS.items() if lib.lrt_cpu_supports(code)]


def _check(status: int, what: str) -> None:
    if status != lib.LRT_OK:
        raise KernelError(f"{what}: {ffi.string(lib.lrt_status_string(status)).decode()}")


@dataclass(frozen=True)
class Activation:
    name: str           # lower-case ONNX name
    alpha: float = 0.0
    beta: float = 0.0


@dataclass(frozen=True)
class CellSpec:
    cell: str                       # "LSTM" | "GRU" | "RNN"
    input_size: int
    hidden_size: int
    activations: tuple              # of Activation: f, g, h as the cell uses them
    clip: float | None = None
    linear_before_reset: bool = False
    input_forget: bool = False
    precision: str = "f32"          # "f32" | "bf16" | "int8"; CellWeights(precision=...) overrides


def _float_buffer(array: np.ndarray | None):
    if array is None:
        return ffi.NULL, 0
    return ffi.from_buffer("float[]", array), array.size


def _check_threads(threads) -> int:
    threads = int(threads)
    if not 0 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must lie in [0, {MAX_THREADS}], got {threads}")
    return threads


def _memory_bytes() -> int:
    from .model import MEMORY_BYTES
    return MEMORY_BYTES


def _check_int8(spec: CellSpec, W: np.ndarray, R: np.ndarray) -> None:
    """What the C packer refuses for int8, said plainly before it is asked."""
    big = max(spec.input_size, spec.hidden_size)
    if big > INT8_MAX_SIZE:
        raise UnsupportedModelError(f"precision='int8' packs {spec.cell} sizes up to {INT8_MAX_SIZE}; this one has "
                                    f"input {spec.input_size}, hidden {spec.hidden_size} (use 'f32' or 'bf16')",
                                    spec.cell)
    for name, array in (("W", W), ("R", R)):
        if not np.isfinite(array).all():
            raise UnsupportedModelError(f"precision='int8' cannot quantize {spec.cell} weights {name} holding "
                                        "inf or NaN (use 'f32' or 'bf16')", spec.cell)


class _PerThread(threading.local):
    """Per-thread scratch of run(): a workspace grown to the largest call and one args
    struct.  Streams of one session run in parallel threads, so nothing here is shared."""
    def __init__(self):
        self.workspace = np.empty(0, np.float32)
        self.workspace_buf = ffi.from_buffer("float[]", self.workspace)
        self.args = ffi.new("lrt_run_args *")


_per_thread = _PerThread()


@dataclass(eq=False)
class CellWeights:
    """Packed weights of one direction; immutable and shared by every stream.

    simd: force a SIMD path ("scalar", "avx2", "avx512"); precision: "f32" (default),
    "bf16" or "int8" for the weight products (overrides spec.precision when given).
    """
    spec: CellSpec
    simd: str | None = None
    precision: str | None = None
    _handle: object = field(init=False, repr=False)

    def pack(self, W, R, B=None, P=None) -> "CellWeights":
        s = self.spec
        precision = self.precision or s.precision
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        desc = ffi.new("lrt_cell_desc *")
        desc.cell = CELLS[s.cell]
        desc.input_size, desc.hidden_size = s.input_size, s.hidden_size
        desc.linear_before_reset, desc.input_forget = int(s.linear_before_reset), int(s.input_forget)
        desc.has_clip, desc.clip = (s.clip is not None), (s.clip or 0.0)
        for i, act in enumerate(s.activations):
            desc.act[i].kind, desc.act[i].alpha, desc.act[i].beta = ACTIVATIONS[act.name], act.alpha, act.beta
        desc.simd = SIMD_PATHS[self.simd] if self.simd else lib.LRT_SIMD_AUTO
        desc.precision = PRECISIONS[precision]
        arrays = [None if a is None else np.ascontiguousarray(a, dtype=np.float32) for a in (W, R, B, P)]
        if precision == "int8":
            _check_int8(s, arrays[0], arrays[1])
        out = ffi.new("lrt_weights **")
        _check(lib.lrt_weights_create(desc, *_float_buffer(arrays[0]), *_float_buffer(arrays[1]),
                                      *_float_buffer(arrays[2]), *_float_buffer(arrays[3]), out),
               f"packing {s.cell} weights")
        self._handle = ffi.gc(out[0], lib.lrt_weights_free)
        self._ws_sizes = {}   # (batch, steps, threads) -> workspace floats; immutable facts
        return self

    @property
    def handle(self):
        """The C weights object (cdata), for compiled programs, which borrow it."""
        return self._handle

    @property
    def simd_path(self) -> str:
        return ffi.string(lib.lrt_weights_path(self._handle)).decode()

    @property
    def packed_precision(self) -> str:
        """"f32", "bf16" or "int8", as packed."""
        return ffi.string(lib.lrt_weights_precision(self._handle)).decode()

    @property
    def product(self) -> str:
        """Instructions of the weight products: "f32", "bf16-emulated", "int8-vnni", "int8-ref"."""
        return ffi.string(lib.lrt_weights_product(self._handle)).decode()

    def workspace_floats(self, batch: int, steps: int, threads: int = 1) -> int:
        return lib.lrt_workspace_floats_threads(self._handle, batch, steps, _check_threads(threads))

    def run(self, x, h, c=None, y=None, y_step_stride=0, seq_lens=None, reverse=False, threads=1):
        """Advance the cell over x [T, B, I] (C-contiguous float32).

        h (and c for LSTM) are [B, H] float32 arrays updated in place.  y, when
        given, is a flat float32 view written at y[t*y_step_stride + b*H + j].
        threads > 1 splits the batch over that many threads, or the hidden units for a batch
        smaller than that (csrc/lstmrt.h); the same result bit for bit.
        """
        T, B = x.shape[0], x.shape[1]
        local = _per_thread
        key = (B, T, threads)
        need = self._ws_sizes.get(key)
        if need is None:
            need = lib.lrt_workspace_floats_threads(self._handle, B, T, _check_threads(threads))
            if need >= 1 << 62:
                raise InputError(f"{self.spec.cell}: batch {B} and steps {T} per call must each be from 1 to "
                                 f"{MAX_DIM} (stream a longer sequence in chunks)")
            if need * 4 > _memory_bytes():
                raise InputError(f"{self.spec.cell}: batch {B} x steps {T} needs a {need * 4 / 2**30:,.0f} GiB "
                                 "workspace, more than this machine's memory (stream it in shorter chunks)")
            if len(self._ws_sizes) < 64:
                self._ws_sizes[key] = need
        if need > local.workspace.size:
            local.workspace = np.empty(need, dtype=np.float32)
            local.workspace_buf = ffi.from_buffer("float[]", local.workspace)
        # every field is set on every call, so what the struct pointed to last time never matters
        args = local.args
        args.batch, args.steps, args.reverse, args.threads = B, T, reverse, threads
        args.x, args.x_len = ffi.from_buffer("float[]", x), x.size
        if seq_lens is not None:
            args.seq_lens, args.seq_lens_len = ffi.from_buffer("int32_t[]", seq_lens), seq_lens.size
        else:
            args.seq_lens, args.seq_lens_len = ffi.NULL, 0
        args.h, args.h_len = ffi.from_buffer("float[]", h), h.size
        args.c, args.c_len = _float_buffer(c)
        args.y, args.y_len = _float_buffer(y)
        args.y_step_stride = y_step_stride
        args.workspace, args.workspace_len = local.workspace_buf, local.workspace.size
        status = lib.lrt_run(self._handle, args)
        if status != lib.LRT_OK:
            _check(status, f"running {self.spec.cell}")

    def runner(self, batch: int, steps: int, threads: int = 1, y: bool = True) -> "CellRunner":
        """A preallocated call of this cell for streaming: see CellRunner."""
        return CellRunner(self, batch, steps, threads, y)


class DenseWeights:
    """A packed constant product operand (a MatMul/Gemm/Conv's weights) for compiled programs:
    W given as N rows of K (the transpose of MatMul's B), bias N floats or None."""

    def __init__(self, W_nk: np.ndarray, bias, simd: str | None = None, precision: str = "f32"):
        W = np.ascontiguousarray(W_nk, dtype=np.float32)
        self.n, self.k = W.shape
        b = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        out = ffi.new("lrt_weights **")
        _check(lib.lrt_dense_create(self.k, self.n, *_float_buffer(W), *_float_buffer(b),
                                    SIMD_PATHS[simd] if simd else lib.LRT_SIMD_AUTO, PRECISIONS[precision], out),
               f"packing a {self.k}x{self.n} product")
        self.handle = ffi.gc(out[0], lib.lrt_weights_free)
        self.ldc = lib.lrt_dense_ldc(self.handle)
        self.scratch_floats = lib.lrt_dense_scratch_floats(self.handle)


class CellRunner:
    """One fixed-shape call of a cell with its own buffers, for the lowest per-call cost.

    Fill `x` [steps, batch, input] (load("x", chunk), or np.copyto) and call `run()`, or do
    both with `step(chunk)`;
    `h` (and `c`) [batch, hidden] carry the state from call to call, and `y`
    [steps, batch, hidden] holds the outputs of the last call.  A call is one C call
    on prebuilt arguments.  Owned by one thread at a time (it holds the workspace).
    """
    def __init__(self, weights: CellWeights, batch: int, steps: int, threads: int = 1, y: bool = True):
        s = weights.spec
        if not (1 <= batch <= MAX_DIM and 1 <= steps <= MAX_DIM):
            raise InputError(f"{s.cell}: batch {batch} and steps {steps} per call must each be from 1 to {MAX_DIM} "
                             "(stream a longer sequence in chunks)")
        self.weights, self.batch, self.steps = weights, batch, steps
        self.x = np.zeros((steps, batch, s.input_size), np.float32)
        self.h = np.zeros((batch, s.hidden_size), np.float32)
        self.c = np.zeros((batch, s.hidden_size), np.float32) if s.cell == "LSTM" else None
        self.y = np.zeros((steps, batch, s.hidden_size), np.float32) if y else None
        self._ws = np.empty(weights.workspace_floats(batch, steps, threads), np.float32)
        self._bufs = [_float_buffer(a) for a in (self.x, self.h, self.c, self.y, self._ws)]
        a = self._args = ffi.new("lrt_run_args *")
        a.batch, a.steps, a.threads = batch, steps, _check_threads(threads)
        (a.x, a.x_len), (a.h, a.h_len), (a.c, a.c_len), (a.y, a.y_len), (a.workspace, a.workspace_len) = self._bufs
        a.y_step_stride = batch * s.hidden_size
        self._raw = {"x": self._bufs[0][0], "h": self._bufs[1][0], "c": self._bufs[2][0]}
        self._raw_x, self._x_bytes = self._raw["x"], self.x.nbytes
        self._reverse = False
        self._call = functools.partial(lib.lrt_run, weights._handle, a)

    def reset(self) -> None:
        self.h.fill(0.0)
        if self.c is not None:
            self.c.fill(0.0)

    def load(self, name: str, value: np.ndarray) -> None:
        """Copy a float32 array of the same size into buffer "x", "h" or "c" (a raw copy
        when it is C-contiguous, which the callers' checks leave as the only question)."""
        target = getattr(self, name)
        if target is None or value.dtype != target.dtype or value.size != target.size:
            raise KernelError(f"CellRunner.load('{name}'): got {value.dtype} of {value.size} values; the buffer "
                              f"holds {None if target is None else target.size} float32")
        try:
            ffi.memmove(self._raw[name], value, value.nbytes)
        except ValueError:   # not C-contiguous
            getattr(self, name).reshape(value.shape)[...] = value

    def run(self, reverse: bool = False) -> None:
        if reverse is not self._reverse:
            self._reverse = self._args.reverse = bool(reverse)
        status = self._call()
        if status:
            _check(status, f"running {self.weights.spec.cell}")

    def step(self, x: np.ndarray) -> None:
        """load("x", x), then run() forward: the streaming call, with no other Python between."""
        try:
            ffi.memmove(self._raw_x, x, self._x_bytes)
        except ValueError:   # not C-contiguous
            np.copyto(self.x, x)
        if self._reverse:
            self._reverse = self._args.reverse = False
        status = self._call()
        if status:
            _check(status, f"running {self.weights.spec.cell}")
