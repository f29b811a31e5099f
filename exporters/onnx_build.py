"""Emitting ONNX straight from framework weights: a small graph builder, native
LSTM/GRU/RNN nodes from gate-reordered weights, and the model's state interface.

Every framework module converts its weights to ONNX's conventions with `reorder_gates`
(once, in one table per framework) and hands them here as `Direction`s.  Nothing here
imports a framework.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 14
IR_VERSION = 8          # onnxruntime >= 1.10 reads it; onnx 1.17 writes it
METADATA_KEY = "lstmrt.state_pairs"   # same key lstmrt.state_pairs reads (kept literal: no lstmrt import)

# ONNX gate orders (onnx.ai/onnx/operators/onnx__LSTM.html, onnx__GRU.html):
#   LSTM: i o f c      GRU: z r h      RNN: one gate
ONNX_GATES = {"LSTM": "iofc", "GRU": "zrh", "RNN": "h"}

# ONNX activation names for the framework names the exporters meet, with (alpha, beta)
ACTIVATIONS = {
    "sigmoid": ("Sigmoid", ()), "tanh": ("Tanh", ()), "relu": ("Relu", ()),
    "linear": ("Affine", (1.0, 0.0)),
    # Keras 3 hard_sigmoid is relu6(x + 3) / 6 = clip(x / 6 + 0.5, 0, 1)
    "hard_sigmoid": ("HardSigmoid", (1.0 / 6.0, 0.5)),
}


def reorder_gates(w: np.ndarray, source: str, target: str, axis: int = 0) -> np.ndarray:
    """Permute the gate blocks of `w` along `axis` from `source` order to `target` order,
    both given as one letter per gate (e.g. "ifco" -> "iofc")."""
    if sorted(source) != sorted(target):
        raise ValueError(f"gate orders {source!r} and {target!r} name different gates")
    blocks = np.split(np.asarray(w, dtype=np.float32), len(source), axis=axis)
    return np.concatenate([blocks[source.index(g)] for g in target], axis=axis)


@dataclass
class Direction:
    """One direction of one recurrent layer, in ONNX's conventions and gate order.
    W [G*H, I], R [G*H, H], Wb [G*H], Rb [G*H] (G gates: 4 LSTM, 3 GRU, 1 RNN)."""
    W: np.ndarray
    R: np.ndarray
    Wb: np.ndarray
    Rb: np.ndarray


class Graph:
    """Nodes, constants and interface of a model being built, with unique names."""

    def __init__(self, name: str = "lstmrt_export"):
        self.name = name
        self.nodes: list = []
        self.initializers: list = []
        self.inputs: list = []
        self.outputs: list = []
        self._used: set = set()
        self._claimed: set = set()
        self._consts: dict = {}

    def claim(self, names) -> None:
        """Keep `names` (the interface's names) out of the generated ones; `reserve` hands each out once."""
        for name in names:
            self.reserve(name)
            self._claimed.add(name)

    def fresh(self, base: str) -> str:
        base = base or "v"
        name, i = base, 1
        while name in self._used:
            name, i = f"{base}_{i}", i + 1
        self._used.add(name)
        return name

    def reserve(self, name: str) -> str:
        if name in self._claimed:
            self._claimed.discard(name)
            return name
        if name in self._used:
            raise ValueError(f"name {name!r} is used twice")
        self._used.add(name)
        return name

    def const(self, value, name: str = "const", dtype=None) -> str:
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 16 else None
        if key is not None and key in self._consts:
            return self._consts[key]
        out = self.fresh(name)
        self.initializers.append(numpy_helper.from_array(array, out))
        if key is not None:
            self._consts[key] = out
        return out

    def ints(self, values, name: str = "ints") -> str:
        return self.const(np.asarray(values, dtype=np.int64), name)

    def op(self, op_type: str, inputs: list, name: str | None = None, outputs: int | list = 1, **attrs):
        """Add a node; returns its output name (or list of names when outputs != 1)."""
        node_name = self.fresh(name or op_type)
        if isinstance(outputs, int):
            outs = [self.fresh(f"{node_name}_out{i}" if outputs > 1 else node_name) for i in range(outputs)]
        else:
            outs = [o if o == "" else self.reserve(o) for o in outputs]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, **attrs))
        return outs[0] if isinstance(outputs, int) and outputs == 1 else outs

    def add_input(self, name: str, elem_type: int, shape: list) -> str:
        self.reserve(name)
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def add_output(self, value: str, name: str, elem_type: int, shape: list | None) -> str:
        """Expose `value` as graph output `name` (through an Identity when the names differ)."""
        if value != name:
            self.op("Identity", [value], name=f"{name}_identity", outputs=[name])
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    # -- small conveniences -------------------------------------------------------------
    def transpose(self, x: str, perm, name="Transpose") -> str:
        return self.op("Transpose", [x], name=name, perm=list(perm))

    def unsqueeze(self, x: str, axes, name="Unsqueeze") -> str:
        return self.op("Unsqueeze", [x, self.ints(axes, "axes")], name=name)

    def squeeze(self, x: str, axes, name="Squeeze") -> str:
        return self.op("Squeeze", [x, self.ints(axes, "axes")], name=name)

    def matmul_add(self, x: str, kernel: np.ndarray, bias: np.ndarray | None, name: str) -> str:
        """x @ kernel (+ bias) on the last axis: a Dense/Linear on any leading axes."""
        y = self.op("MatMul", [x, self.const(np.asarray(kernel, np.float32), f"{name}.kernel")], name=f"{name}/MatMul")
        if bias is not None:
            y = self.op("Add", [y, self.const(np.asarray(bias, np.float32), f"{name}.bias")], name=f"{name}/Add")
        return y

    def activation(self, x: str, kind: str, name: str) -> str:
        """An elementwise activation by its framework-neutral name."""
        if kind in ("linear", None):
            return x
        if kind in ("relu", "tanh", "sigmoid"):
            return self.op(kind.capitalize(), [x], name=f"{name}/{kind}")
        if kind == "softmax":
            return self.op("Softmax", [x], name=f"{name}/softmax", axis=-1)
        if kind in ("silu", "swish"):
            return self.op("Mul", [x, self.op("Sigmoid", [x], name=f"{name}/sigmoid")], name=f"{name}/{kind}")
        if kind == "gelu":   # the exact form, x/2 (1 + erf(x/sqrt 2)), as Keras' default
            scaled = self.op("Mul", [x, self.const(np.float32(1 / np.sqrt(2)), "inv_sqrt2")], name=f"{name}/scale")
            erf = self.op("Erf", [scaled], name=f"{name}/erf")
            one_plus = self.op("Add", [erf, self.const(np.float32(1.0), "one")], name=f"{name}/one_plus")
            half = self.op("Mul", [x, self.const(np.float32(0.5), "half")], name=f"{name}/half")
            return self.op("Mul", [half, one_plus], name=f"{name}/gelu")
        raise NotImplementedError(kind)

    def model(self, metadata: dict | None = None, producer: str = "lstmrt.exporters") -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, producer_name=producer, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = IR_VERSION
        for key, value in (metadata or {}).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(model)
        return model


def recurrent(g: Graph, kind: str, x: str, hidden: int, directions: list, *, name: str,
              h0: str | None = None, c0: str | None = None, seq_lens: str | None = None,
              linear_before_reset: int = 0, activations: list | None = None,
              want_state: bool = True):
    """One native LSTM/GRU/RNN node (layout 0: X [T, B, I]) from `Direction`s already in
    ONNX gate order.  Returns (Y [T, D, B, H], Y_h [D, B, H], Y_c [D, B, H] or None)."""
    if kind not in ONNX_GATES:
        raise ValueError(kind)
    W = g.const(np.stack([d.W for d in directions]).astype(np.float32), f"{name}.W")
    R = g.const(np.stack([d.R for d in directions]).astype(np.float32), f"{name}.R")
    B = g.const(np.stack([np.concatenate([d.Wb, d.Rb]) for d in directions]).astype(np.float32), f"{name}.B")
    inputs = [x, W, R, B, seq_lens or "", h0 or ""]
    if kind == "LSTM":
        inputs.append(c0 or "")
    while inputs and inputs[-1] == "":
        inputs.pop()
    n_out = 3 if kind == "LSTM" else 2
    outs = [g.fresh(f"{name}.Y"), g.fresh(f"{name}.Y_h")] + ([g.fresh(f"{name}.Y_c")] if kind == "LSTM" else [])
    if not want_state:
        outs = outs[:1]
    attrs = {"hidden_size": hidden, "direction": "bidirectional" if len(directions) == 2 else "forward"}
    if kind == "GRU":
        attrs["linear_before_reset"] = linear_before_reset
    if activations is not None:
        names, params = [], []
        for act in activations * len(directions):
            onnx_name, ab = ACTIVATIONS[act]
            names.append(onnx_name)
            params.extend(ab)
        attrs["activations"] = names
        # alpha/beta are consumed in order by the activations that take them (Affine, HardSigmoid)
        if params:
            attrs["activation_alpha"] = params[0::2]
            attrs["activation_beta"] = params[1::2]
    g.nodes.append(helper.make_node(kind, inputs, outs, name=g.fresh(name), **attrs))
    del n_out
    outs += [None] * (3 - len(outs))
    return outs[0], outs[1], outs[2]


def state_pairs_metadata(pairs: dict) -> dict:
    return {METADATA_KEY: json.dumps(pairs)} if pairs else {}


FLOAT = TensorProto.FLOAT
