"""Helpers that build single-node ONNX LSTM/GRU/RNN test models (and their inputs).

Reusable by any test:

    spec = RecurrentSpec("LSTM", input_size=5, hidden_size=7, direction="bidirectional", layout=1)
    weights = random_weights(spec, rng)
    model = make_recurrent_model(spec, weights)           # layout as in spec
    twin = make_recurrent_model(spec.with_layout(0), weights)   # what onnxruntime accepts
    feed = random_feed(spec, batch=3, steps=4, rng=rng)

W/R/B/P are initializers; X, sequence_lens, initial_h, initial_c are graph inputs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CELLS = ("LSTM", "GRU", "RNN")
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
ACT_SLOTS = {"LSTM": 3, "GRU": 2, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
ACTIVATIONS = ("Sigmoid", "Tanh", "Relu", "HardSigmoid", "Affine", "LeakyRelu", "ThresholdedRelu",
               "ScaledTanh", "Elu", "Softsign", "Softplus")
# which activations consume (alpha, beta) from activation_alpha / activation_beta, in order
TAKES_ALPHA_BETA = {"Affine": (True, True), "LeakyRelu": (True, False), "ThresholdedRelu": (True, False),
                    "ScaledTanh": (True, True), "HardSigmoid": (True, True), "Elu": (True, False)}
ALPHA_BETA_DEFAULTS = {"LeakyRelu": (0.01, 0.0), "HardSigmoid": (0.2, 0.5), "Elu": (1.0, 0.0)}
OUTPUT_NAMES = ("Y", "Y_h", "Y_c")


@dataclass(frozen=True)
class RecurrentSpec:
    cell: str
    input_size: int
    hidden_size: int
    direction: str = "forward"
    layout: int = 0
    has_bias: bool = True
    has_peepholes: bool = False          # LSTM only
    has_seq_lens: bool = False
    has_initial_h: bool = False
    has_initial_c: bool = False          # LSTM only
    outputs: tuple = (True, True, True)  # (Y, Y_h, Y_c); Y_c ignored unless LSTM
    activations: tuple | None = None     # per direction concatenated; None: attribute absent
    activation_alpha: tuple | None = None
    activation_beta: tuple | None = None
    clip: float | None = None
    input_forget: int | None = None      # LSTM only
    linear_before_reset: int | None = None  # GRU only
    opset: int = 14

    @property
    def num_directions(self) -> int:
        return 2 if self.direction == "bidirectional" else 1

    @property
    def output_flags(self) -> tuple:
        y, yh, yc = (tuple(self.outputs) + (False, False, False))[:3]
        return (bool(y), bool(yh), bool(yc) and self.cell == "LSTM")

    @property
    def output_names(self) -> list:
        """Names of the graph outputs, in order (omitted ones left out)."""
        return [n for n, on in zip(OUTPUT_NAMES, self.output_flags) if on]

    def with_layout(self, layout: int) -> "RecurrentSpec":
        return dataclasses.replace(self, layout=layout)

    def uses_default_semantics(self) -> bool:
        """True when activations/clip/input_forget are at their defaults (what onnx.reference honours)."""
        acts_default = self.activations is None or tuple(a.lower() for a in self.activations) == tuple(
            a.lower() for a in DEFAULT_ACTIVATIONS[self.cell] * self.num_directions)
        return acts_default and self.clip is None and not self.input_forget


def random_weights(spec: RecurrentSpec, rng: np.random.Generator, scale: float = 0.5) -> dict:
    """W, R (and B, P when the spec has them), uniform(-scale, scale), float32."""
    D, G, H, I = spec.num_directions, GATES[spec.cell], spec.hidden_size, spec.input_size

    def u(*shape):
        return rng.uniform(-scale, scale, size=shape).astype(np.float32)

    weights = {"W": u(D, G * H, I), "R": u(D, G * H, H)}
    if spec.has_bias:
        weights["B"] = u(D, 2 * G * H)
    if spec.has_peepholes and spec.cell == "LSTM":
        weights["P"] = u(D, 3 * H)
    return weights


def random_feed(spec: RecurrentSpec, batch: int, steps: int, rng: np.random.Generator,
                seq_lens=None, scale: float = 1.0) -> dict:
    """Graph inputs for `spec`, in the spec's layout. seq_lens: None (random in 1..steps) or a list."""
    D, H, I = spec.num_directions, spec.hidden_size, spec.input_size
    x = rng.uniform(-scale, scale, size=(steps, batch, I)).astype(np.float32)
    feed = {"X": x}
    if spec.has_seq_lens:
        if seq_lens is None:
            seq_lens = rng.integers(1, steps + 1, size=batch)
        feed["sequence_lens"] = np.asarray(seq_lens, dtype=np.int32)
    if spec.has_initial_h:
        feed["initial_h"] = rng.uniform(-scale, scale, size=(D, batch, H)).astype(np.float32)
    if spec.has_initial_c and spec.cell == "LSTM":
        feed["initial_c"] = rng.uniform(-scale, scale, size=(D, batch, H)).astype(np.float32)
    return feed_to_layout(feed, spec.layout)


def feed_to_layout(feed: dict, layout: int, from_layout: int = 0) -> dict:
    """Convert X / initial_h / initial_c between layout 0 ([T,B,I], [D,B,H]) and layout 1 ([B,T,I], [B,D,H])."""
    if layout == from_layout:
        return dict(feed)
    out = {}
    for name, value in feed.items():
        if name in ("X", "initial_h", "initial_c"):
            value = np.ascontiguousarray(np.swapaxes(value, 0, 1))
        out[name] = value
    return out


def outputs_to_layout(names: list, outputs: list, layout: int, from_layout: int = 0) -> list:
    """Convert Y ([T,D,B,H] <-> [B,T,D,H]) and Y_h / Y_c ([D,B,H] <-> [B,D,H]) between layouts."""
    if layout == from_layout:
        return list(outputs)
    converted = []
    for name, value in zip(names, outputs):
        if name == "Y":
            value = value.transpose(2, 0, 1, 3) if layout == 1 else value.transpose(1, 2, 0, 3)
        else:
            value = np.swapaxes(value, 0, 1)
        converted.append(np.ascontiguousarray(value))
    return converted


def make_recurrent_model(spec: RecurrentSpec, weights: dict, node_name: str = "rnn0") -> onnx.ModelProto:
    """A single-node model for `spec` with the given weights as initializers."""
    cell = spec.cell
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
    D, H, I = spec.num_directions, spec.hidden_size, spec.input_size
    fl = np.float32
    if spec.layout == 0:
        x_shape, state_shape = ["T", "B", I], [D, "B", H]
        y_shape = ["T", D, "B", H]
    else:
        x_shape, state_shape = ["B", "T", I], ["B", D, H]
        y_shape = ["B", "T", D, H]

    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    node_inputs = ["X", "W", "R", "B" if "B" in weights else ""]
    if spec.has_seq_lens:
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["B"]))
        node_inputs.append("sequence_lens")
    else:
        node_inputs.append("")
    if spec.has_initial_h:
        inputs.append(helper.make_tensor_value_info("initial_h", TensorProto.FLOAT, state_shape))
        node_inputs.append("initial_h")
    else:
        node_inputs.append("")
    if cell == "LSTM":
        if spec.has_initial_c:
            inputs.append(helper.make_tensor_value_info("initial_c", TensorProto.FLOAT, state_shape))
            node_inputs.append("initial_c")
        else:
            node_inputs.append("")
        node_inputs.append("P" if "P" in weights else "")
    while node_inputs and node_inputs[-1] == "":
        node_inputs.pop()

    initializers = [numpy_helper.from_array(np.asarray(weights[k], dtype=fl), k)
                    for k in ("W", "R", "B", "P") if k in weights]

    flags = spec.output_flags
    node_outputs = [name if on else "" for name, on in zip(OUTPUT_NAMES[:2 if cell != "LSTM" else 3], flags)]
    while node_outputs and node_outputs[-1] == "":
        node_outputs.pop()
    if not node_outputs:
        raise ValueError("a recurrent node needs at least one output")
    out_shapes = {"Y": y_shape, "Y_h": state_shape, "Y_c": state_shape}
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, out_shapes[n]) for n in node_outputs if n]

    attrs = {"hidden_size": H}
    if spec.direction != "forward":
        attrs["direction"] = spec.direction
    if spec.layout:
        attrs["layout"] = spec.layout
    if spec.activations is not None:
        attrs["activations"] = list(spec.activations)
    if spec.activation_alpha is not None:
        attrs["activation_alpha"] = [float(a) for a in spec.activation_alpha]
    if spec.activation_beta is not None:
        attrs["activation_beta"] = [float(b) for b in spec.activation_beta]
    if spec.clip is not None:
        attrs["clip"] = float(spec.clip)
    if cell == "LSTM" and spec.input_forget is not None:
        attrs["input_forget"] = int(spec.input_forget)
    if cell == "GRU" and spec.linear_before_reset is not None:
        attrs["linear_before_reset"] = int(spec.linear_before_reset)

    float_lists = {k: attrs.pop(k) for k in ("activation_alpha", "activation_beta") if k in attrs}
    node = helper.make_node(cell, node_inputs, node_outputs, name=node_name, **attrs)
    for key, values in float_lists.items():  # may be empty: helper cannot infer the type of []
        node.attribute.append(helper.make_attribute(key, values, attr_type=onnx.AttributeProto.FLOATS))
    graph = helper.make_graph([node], f"{cell.lower()}_test", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", spec.opset)],
                              producer_name="lstmrt-tests")
    model.ir_version = 8  # loadable by older onnxruntime builds too
    onnx.checker.check_model(model)
    return model


# ---------------------------------------------------------------------------
# A small numpy reference that follows the ONNX spec (used to adjudicate
# disagreements between lstmrt and onnxruntime, not as the primary oracle).
# ---------------------------------------------------------------------------

def _activation(name: str, alpha: float, beta: float):
    n = name.lower()
    table = {
        "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
        "tanh": np.tanh,
        "relu": lambda x: np.maximum(x, 0.0),
        "affine": lambda x: alpha * x + beta,
        "leakyrelu": lambda x: np.where(x >= 0, x, alpha * x),
        "thresholdedrelu": lambda x: np.where(x > alpha, x, 0.0),
        "scaledtanh": lambda x: alpha * np.tanh(beta * x),
        "hardsigmoid": lambda x: np.clip(alpha * x + beta, 0.0, 1.0),
        "elu": lambda x: np.where(x >= 0, x, alpha * (np.exp(np.minimum(x, 0.0)) - 1.0)),
        "softsign": lambda x: x / (1.0 + np.abs(x)),
        "softplus": lambda x: np.logaddexp(0.0, x),
    }
    return table[n]


def resolve_activations(spec: RecurrentSpec) -> list:
    """Per direction, a list of (name, alpha, beta), alpha/beta consumed in order by those that take them."""
    slots = ACT_SLOTS[spec.cell]
    names = list(spec.activations) if spec.activations is not None else \
        list(DEFAULT_ACTIVATIONS[spec.cell]) * spec.num_directions
    alphas = list(spec.activation_alpha or [])
    betas = list(spec.activation_beta or [])
    resolved = []
    for name in names:
        canon = next(a for a in ACTIVATIONS if a.lower() == name.lower())
        ta, tb = TAKES_ALPHA_BETA.get(canon, (False, False))
        da, db = ALPHA_BETA_DEFAULTS.get(canon, (0.0, 0.0))
        alpha = (alphas.pop(0) if alphas else da) if ta else 0.0
        beta = (betas.pop(0) if betas else db) if tb else 0.0
        resolved.append((canon, alpha, beta))
    return [resolved[d * slots:(d + 1) * slots] for d in range(spec.num_directions)]


def numpy_reference(spec: RecurrentSpec, weights: dict, feed: dict, return_peak: bool = False):
    """Outputs (spec.output_names order, spec's layout) computed in float64 per the ONNX spec.

    return_peak: also return the largest |h| / |c| reached at any step (how large the state grew,
    which bounds the float32 rounding error one can expect; inf if it overflowed), as (outputs, peak).
    """
    with np.errstate(over="ignore", invalid="ignore"):
        return _numpy_reference(spec, weights, feed, return_peak)


def _numpy_reference(spec: RecurrentSpec, weights: dict, feed: dict, return_peak: bool):
    feed0 = feed_to_layout(feed, 0, from_layout=spec.layout)
    x = feed0["X"].astype(np.float64)
    T, Bsz, _ = x.shape
    D, H, G = spec.num_directions, spec.hidden_size, GATES[spec.cell]
    W = weights["W"].astype(np.float64)
    R = weights["R"].astype(np.float64)
    Bias = weights.get("B", np.zeros((D, 2 * G * H))).astype(np.float64)
    P = weights.get("P", np.zeros((D, 3 * H))).astype(np.float64)
    seq = feed0.get("sequence_lens")
    seq = np.full(Bsz, T) if seq is None else seq.astype(np.int64)
    h0 = feed0.get("initial_h", np.zeros((D, Bsz, H))).astype(np.float64)
    c0 = feed0.get("initial_c", np.zeros((D, Bsz, H))).astype(np.float64)
    acts = resolve_activations(spec)
    clip = spec.clip

    def cl(v):
        return v if clip is None else np.clip(v, -clip, clip)

    Y = np.zeros((T, D, Bsz, H))
    Yh = np.zeros((D, Bsz, H))
    Yc = np.zeros((D, Bsz, H))
    peak = 0.0
    for d in range(D):
        reverse = spec.direction == "reverse" or d == 1
        fns = [_activation(*a) for a in acts[d]]
        Wb, Rb = Bias[d, :G * H], Bias[d, G * H:]
        for b in range(Bsz):
            L = int(seq[b])
            h, c = h0[d, b].copy(), c0[d, b].copy()
            order = range(L - 1, -1, -1) if reverse else range(L)
            for t in order:
                xt = x[t, b]
                if spec.cell == "RNN":
                    h = fns[0](cl(W[d] @ xt + R[d] @ h + Wb + Rb))
                elif spec.cell == "GRU":
                    f, g = fns
                    wx = W[d] @ xt
                    z = f(cl(wx[:H] + R[d, :H] @ h + Wb[:H] + Rb[:H]))
                    r = f(cl(wx[H:2 * H] + R[d, H:2 * H] @ h + Wb[H:2 * H] + Rb[H:2 * H]))
                    if spec.linear_before_reset:
                        hh = g(cl(wx[2 * H:] + r * (R[d, 2 * H:] @ h + Rb[2 * H:]) + Wb[2 * H:]))
                    else:
                        hh = g(cl(wx[2 * H:] + R[d, 2 * H:] @ (r * h) + Rb[2 * H:] + Wb[2 * H:]))
                    h = (1 - z) * hh + z * h
                else:
                    f, g, hf = fns
                    pre = W[d] @ xt + R[d] @ h + Wb + Rb
                    pi, po, pf = P[d, :H], P[d, H:2 * H], P[d, 2 * H:]
                    i = f(cl(pre[:H] + pi * c))
                    if spec.input_forget:
                        fg = 1 - i
                    else:
                        fg = f(cl(pre[2 * H:3 * H] + pf * c))
                    ct = g(cl(pre[3 * H:]))
                    c = fg * c + i * ct
                    o = f(cl(pre[H:2 * H] + po * c))
                    h = o * hf(c)
                Y[t, d, b] = h
                peak = max(peak, float(np.max(np.abs(h))), float(np.max(np.abs(c))))
            Yh[d, b] = h
            Yc[d, b] = c
    if not (np.all(np.isfinite(Y)) and np.all(np.isfinite(Yh)) and np.all(np.isfinite(Yc))):
        peak = float("inf")
    result = {"Y": Y, "Y_h": Yh, "Y_c": Yc}
    names = spec.output_names
    outs = [result[n].astype(np.float32) for n in names]
    outs = outputs_to_layout(names, outs, spec.layout, from_layout=0)
    return (outs, peak) if return_peak else outs


def recurrent_test_cases(op_types=CELLS) -> list:
    """ONNX's own node conformance cases (onnx.backend.test.case.node) whose model has one of `op_types`.

    collect_testcases() fills a module-global list once (at import of the case modules), so it is
    called without a filter and filtered here.
    """
    import warnings

    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    return [c for c in cases if c.model is not None
            and any(n.op_type in op_types for n in c.model.graph.node)]
