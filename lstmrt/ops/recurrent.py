"""ONNX LSTM, GRU and RNN (opsets 7-22) mapped onto the C kernel.

The node's attributes are checked and its constant weights packed once, at
load; every stream of a session shares the packed weights.  Layout 1 and
bidirectional runs are handled here, so the kernel sees one direction of
[T, B, I] at a time.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..kernel import ACTIVATIONS, F32, GATES, Activation, CellSpec, CellWeights
from . import NodeInfo, op

ACT_SLOTS = {"LSTM": 3, "GRU": 2, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ("sigmoid", "tanh", "tanh"), "GRU": ("sigmoid", "tanh"), "RNN": ("tanh",)}
# which activations consume an alpha / a beta, and their defaults (as onnxruntime does)
_TAKES_ALPHA_BETA = {"affine": (True, True), "leakyrelu": (True, False), "thresholdedrelu": (True, False),
                     "scaledtanh": (True, True), "hardsigmoid": (True, True), "elu": (True, False)}
_ALPHA_BETA_DEFAULTS = {"leakyrelu": (0.01, 0.0), "hardsigmoid": (0.2, 0.5), "elu": (1.0, 0.0)}
INPUT_NAMES = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")


def parse_activations(node: NodeInfo, num_directions: int) -> list[tuple]:
    """Per direction, a tuple of Activation; alpha/beta consumed in order only by those that take them."""
    slots = ACT_SLOTS[node.op_type]
    names = node.attrs.get("activations")
    if names is None:
        names = list(DEFAULT_ACTIVATIONS[node.op_type]) * num_directions
    if len(names) != slots * num_directions:
        raise node.fail(f"'activations' has {len(names)} entries; expected {slots * num_directions} "
                        f"({slots} per direction x {num_directions} directions)")
    alphas = list(node.attrs.get("activation_alpha", []))
    betas = list(node.attrs.get("activation_beta", []))
    parsed = []
    for name in names:
        key = name.lower()
        if key not in ACTIVATIONS:
            raise node.fail(f"unsupported activation '{name}' (supported: {', '.join(sorted(ACTIVATIONS))})")
        takes_alpha, takes_beta = _TAKES_ALPHA_BETA.get(key, (False, False))
        default_alpha, default_beta = _ALPHA_BETA_DEFAULTS.get(key, (0.0, 0.0))
        alpha = (alphas.pop(0) if alphas else default_alpha) if takes_alpha else 0.0
        beta = (betas.pop(0) if betas else default_beta) if takes_beta else 0.0
        parsed.append(Activation(key, alpha, beta))
    return [tuple(parsed[d * slots:(d + 1) * slots]) for d in range(num_directions)]


class RecurrentNode:
    def __init__(self, node: NodeInfo):
        self.node = node
        self.cell = node.op_type
        a = node.attrs
        if node.opset < 7:
            raise node.fail(f"opset {node.opset} is not supported; recurrent ops are supported from opset 7")
        allowed = {"activations", "activation_alpha", "activation_beta", "clip", "direction", "hidden_size",
                   "layout"} | {"LSTM": {"input_forget"}, "GRU": {"linear_before_reset"}, "RNN": set()}[self.cell]
        unknown = set(a) - allowed
        if unknown:
            raise node.fail(f"unsupported attribute(s) {sorted(unknown)}")
        self.direction = a.get("direction", "forward")
        if self.direction not in ("forward", "reverse", "bidirectional"):
            raise node.fail(f"direction '{self.direction}' must be forward, reverse or bidirectional")
        self.num_directions = 2 if self.direction == "bidirectional" else 1
        self.layout = a.get("layout", 0)
        if self.layout not in (0, 1):
            raise node.fail(f"layout {self.layout} must be 0 or 1")
        self.clip = a.get("clip")
        if self.clip is not None and not self.clip > 0:
            raise node.fail(f"clip must be positive, got {self.clip}")
        self.activations = parse_activations(node, self.num_directions)
        self.hidden_size_attr = a.get("hidden_size")
        self.threads = node.options["native"].threads
        self._want_y = len(node.outputs) > 0 and node.outputs[0] != ""
        # weights known at load are packed once here; others are packed per call
        self.packed = self._pack(*self._const_weights(), node.invalid) if self._const_weights() else None

    def _const_weights(self):
        node = self.node
        present = [i for i in (1, 2, 3, 7) if i < len(node.inputs) and node.inputs[i]]
        if any(node.const_input(i) is None for i in present) or not {1, 2} <= set(present):
            return None
        return [node.const_input(i) for i in (1, 2, 3, 7)]

    # -- weights ---------------------------------------------------------------
    def _spec(self, W, R, direction: int) -> CellSpec:
        a = self.node.attrs
        return CellSpec(self.cell, input_size=W.shape[2], hidden_size=R.shape[2],
                        activations=self.activations[direction], clip=self.clip,
                        linear_before_reset=bool(a.get("linear_before_reset", 0)),
                        input_forget=bool(a.get("input_forget", 0)))

    def _check_weights(self, W, R, B, P, error):
        D, G = self.num_directions, GATES[self.cell]
        for name, arr in (("W", W), ("R", R), ("B", B), ("P", P)):
            if arr is not None and arr.dtype != np.float32:
                raise self.node.fail(f"input {name} has type {arr.dtype}; only float32 is supported")
        if W.ndim != 3 or R.ndim != 3 or W.shape[0] != D or R.shape[0] != D:
            raise error(f"W {W.shape} and R {R.shape} must be [{D}, {G}*hidden, input] and [{D}, {G}*hidden, hidden]")
        H = R.shape[2]
        if self.hidden_size_attr is not None and self.hidden_size_attr != H:
            raise error(f"hidden_size={self.hidden_size_attr} but R has hidden size {H}")
        if H < 1 or W.shape[2] < 1 or W.shape[1] != G * H or R.shape[1] != G * H:
            raise error(f"W {W.shape} / R {R.shape} inconsistent with {G} gates of hidden size {H}")
        if B is not None and B.shape != (D, 2 * G * H):
            raise error(f"B has shape {B.shape}; expected {(D, 2 * G * H)}")
        if P is not None and (self.cell != "LSTM" or P.shape != (D, 3 * H)):
            raise error(f"P has shape {P.shape}; expected {(D, 3 * H)}")

    def _pack(self, W, R, B, P, error) -> list:
        self._check_weights(W, R, B, P, error)
        native = self.node.options["native"]
        return [CellWeights(self._spec(W, R, d), native.simd, native.precision).pack(
            W[d], R[d], None if B is None else B[d], None if P is None else P[d])
            for d in range(self.num_directions)]

    # -- running ---------------------------------------------------------------
    def _input_error(self, message):
        return InputError(f"node '{self.node.name}' ({self.cell}): {message}")

    def _state(self, value, name, B, H):
        """A private copy (the kernel updates it) of a checked initial state, zeros if absent."""
        if value is None:
            return np.zeros((self.num_directions, B, H), np.float32)
        return np.array(self._checked_state(value, name, B, H), dtype=np.float32, order="C")

    def _checked_state(self, value, name, B, H):
        D = self.num_directions
        if value.dtype != F32:
            raise self._input_error(f"{name} has type {value.dtype}; expected float32")
        if self.layout == 1:
            value = np.swapaxes(value, 0, 1)
        if value.shape != (D, B, H):
            expected = (B, D, H) if self.layout == 1 else (D, B, H)
            shown = np.swapaxes(value, 0, 1).shape if self.layout == 1 else value.shape
            raise self._input_error(f"{name} has shape {shown}; expected {expected}")
        return value

    def _seq_lens(self, value, B, T):
        if value is None:
            return None
        if value.shape != (B,) or not np.issubdtype(value.dtype, np.integer):
            raise self._input_error(f"sequence_lens must be an int32 vector of length {B}, got {value.dtype} {value.shape}")
        if value.size and (value.min() < 0 or value.max() > T):
            raise self._input_error(f"sequence_lens values must lie in [0, {T}], got {value.tolist()}")
        return np.ascontiguousarray(value, dtype=np.int32)

    def __call__(self, inputs: list) -> list:
        inputs = list(inputs) + [None] * (8 - len(inputs))
        X, W, R, B, seq, h0, c0, P = inputs
        if self.packed is None and (W is None or R is None):
            raise self._input_error("W and R are required")
        packed = self.packed or self._pack(W, R, B, P, self._input_error)
        if X is None or X.ndim != 3 or X.dtype != F32:
            raise self._input_error("X must be a rank-3 float32 tensor"
                                    + ("" if X is None else f", got {X.dtype} {X.shape}"))
        x = np.ascontiguousarray(np.swapaxes(X, 0, 1) if self.layout == 1 else X)
        T, Bsz, I = x.shape
        H, D = packed[0].spec.hidden_size, self.num_directions
        if I != packed[0].spec.input_size:
            raise self._input_error(f"X has input size {I}; W expects {packed[0].spec.input_size}")
        seq_lens = self._seq_lens(seq, Bsz, T)
        h = self._state(h0, "initial_h", Bsz, H)
        c = self._state(c0, "initial_c", Bsz, H) if self.cell == "LSTM" else None
        want_y = self._want_y
        y = np.empty((T, D, Bsz, H), np.float32) if want_y else None   # the kernel writes every entry
        for d, weights in enumerate(packed):
            reverse = self.direction == "reverse" or d == 1
            y_view = y.reshape(-1)[d * Bsz * H:] if want_y else None
            weights.run(x, h[d], None if c is None else c[d], y_view, D * Bsz * H, seq_lens, reverse,
                        threads=self.threads)
        outputs = [y, h, c]
        if self.layout == 1:
            outputs = [None if y is None else y.transpose(2, 0, 1, 3), np.swapaxes(h, 0, 1),
                       None if c is None else np.swapaxes(c, 0, 1)]
        return outputs[:len(self.node.outputs)]


@op("LSTM", "GRU", "RNN")
def _recurrent(node: NodeInfo):
    return RecurrentNode(node)
