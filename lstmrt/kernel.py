"""Thin Python face of the C kernel (csrc/): pack one direction's weights, run it.

Knows nothing of ONNX graphs; lstmrt/ops/recurrent.py maps ONNX nodes onto it.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field

import numpy as np

from .errors import KernelError


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


def _float_buffer(array: np.ndarray | None):
    if array is None:
        return ffi.NULL, 0
    return ffi.from_buffer("float[]", array), array.size


@dataclass(eq=False)
class CellWeights:
    """Packed weights of one direction; immutable and shared by every stream."""
    spec: CellSpec
    simd: str | None = None
    _handle: object = field(init=False, repr=False)

    def pack(self, W, R, B=None, P=None) -> "CellWeights":
        s = self.spec
        desc = ffi.new("lrt_cell_desc *")
        desc.cell = CELLS[s.cell]
        desc.input_size, desc.hidden_size = s.input_size, s.hidden_size
        desc.linear_before_reset, desc.input_forget = int(s.linear_before_reset), int(s.input_forget)
        desc.has_clip, desc.clip = (s.clip is not None), (s.clip or 0.0)
        for i, act in enumerate(s.activations):
            desc.act[i].kind, desc.act[i].alpha, desc.act[i].beta = ACTIVATIONS[act.name], act.alpha, act.beta
        desc.simd = SIMD_PATHS[self.simd] if self.simd else lib.LRT_SIMD_AUTO
        arrays = [None if a is None else np.ascontiguousarray(a, dtype=np.float32) for a in (W, R, B, P)]
        out = ffi.new("lrt_weights **")
        _check(lib.lrt_weights_create(desc, *_float_buffer(arrays[0]), *_float_buffer(arrays[1]),
                                      *_float_buffer(arrays[2]), *_float_buffer(arrays[3]), out),
               f"packing {s.cell} weights")
        self._handle = ffi.gc(out[0], lib.lrt_weights_free)
        return self

    @property
    def simd_path(self) -> str:
        return ffi.string(lib.lrt_weights_path(self._handle)).decode()

    def run(self, x, h, c=None, y=None, y_step_stride=0, seq_lens=None, reverse=False):
        """Advance the cell over x [T, B, I] (C-contiguous float32).

        h (and c for LSTM) are [B, H] float32 arrays updated in place.  y, when
        given, is a flat float32 view written at y[t*y_step_stride + b*H + j].
        """
        T, B = x.shape[0], x.shape[1]
        ws = np.empty(lib.lrt_workspace_floats(self._handle, B, T), dtype=np.float32)
        args = ffi.new("lrt_run_args *")
        args.batch, args.steps, args.reverse = B, T, int(reverse)
        args.x, args.x_len = _float_buffer(x)
        if seq_lens is not None:
            args.seq_lens, args.seq_lens_len = ffi.from_buffer("int32_t[]", seq_lens), seq_lens.size
        args.h, args.h_len = _float_buffer(h)
        args.c, args.c_len = _float_buffer(c)
        args.y, args.y_len = _float_buffer(y)
        args.y_step_stride = y_step_stride
        args.workspace, args.workspace_len = _float_buffer(ws)
        _check(lib.lrt_run(self._handle, args), f"running {self.spec.cell}")
