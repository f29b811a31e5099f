"""Keras 3 (TensorFlow backend) -> ONNX, emitted straight from the layers' weights.

The functional graph is walked from the model's outputs; each layer becomes ONNX nodes.
Recurrent layers become one native LSTM/GRU/RNN node each (layout 0, time-major inside the
graph; the model's own inputs and outputs stay batch-major as in Keras).  Masks (Embedding
mask_zero, Masking) become the nodes' sequence_lens.  A SavedModel folder, whose layers
Keras 3 cannot reload, is converted by tf2onnx instead (keras_savedmodel.py).  TensorFlow
and Keras are imported only inside functions.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper

from .onnx_build import ACTIVATIONS, OPSET, Direction, Graph, recurrent, reorder_gates, state_pairs_metadata
from .verify import InputSpec

# --- gate orders and bias conventions: the one place for Keras ------------------------------
# Keras kernels are [input, gates*units] (x @ kernel); ONNX W is [gates*units, input] (W @ x).
# LSTM: Keras gate order i f c o   -> ONNX i o f c ; one bias [4H] (input side), ONNX Rb = 0.
# GRU:  Keras gate order z r h     -> ONNX z r h (same); reset_after=True: bias [2, 3H] =
#       [input bias; recurrent bias] and ONNX linear_before_reset=1; reset_after=False: bias [3H]
#       (input side), linear_before_reset=0.
# SimpleRNN: one gate, bias [H].
KERAS_GATES = {"LSTM": "ifco", "GRU": "zrh", "SimpleRNN": "h"}
ONNX_KIND = {"LSTM": "LSTM", "GRU": "GRU", "SimpleRNN": "RNN"}
ONNX_ORDER = {"LSTM": "iofc", "GRU": "zrh", "SimpleRNN": "h"}


def _direction(layer) -> tuple[Direction, int]:
    """The layer's weights as one ONNX Direction, and its linear_before_reset."""
    kind = type(layer).__name__
    cell = layer.cell
    kernel = np.asarray(cell.kernel.numpy(), np.float32)
    rec = np.asarray(cell.recurrent_kernel.numpy(), np.float32)
    units = cell.units
    gates = len(KERAS_GATES[kind])
    if cell.use_bias:
        bias = np.asarray(cell.bias.numpy(), np.float32)
    else:
        bias = np.zeros((2, gates * units) if kind == "GRU" and cell.reset_after else (gates * units,), np.float32)
    lbr = 0
    if kind == "GRU" and cell.reset_after:
        wb, rb, lbr = bias[0], bias[1], 1
    else:
        wb, rb = bias, np.zeros_like(bias)
    src, dst = KERAS_GATES[kind], ONNX_ORDER[kind]
    return Direction(W=reorder_gates(kernel.T, src, dst), R=reorder_gates(rec.T, src, dst),
                     Wb=reorder_gates(wb, src, dst), Rb=reorder_gates(rb, src, dst)), lbr


def _activation_name(fn, layer_name: str) -> str:
    name = getattr(fn, "__name__", str(fn))
    if name not in ACTIVATIONS:
        raise _error(f"layer '{layer_name}': activation '{name}' has no ONNX recurrent equivalent "
                     f"(supported: {', '.join(ACTIVATIONS)})")
    return name


def _error(message):
    from . import ExportError
    return ExportError(message)


@dataclass
class Val:
    name: str              # ONNX value
    layout: str            # "btf" (Keras), "tbf" (inside recurrences), "bf", "bt" (tokens),
    #                        "bnf" (3-D with a fixed middle axis, e.g. RepeatVector), "rank<n>"
    mask: tuple | None = None   # (indicator [B, T] float, sequence lengths [B] int32)


class _Emitter:
    def __init__(self, model, state: bool):
        self.model = model
        self.state = state
        self.g = Graph(model.name)
        self.values: dict = {}
        self.specs: dict = {}
        self.pairs: dict = {}
        self.state_values: dict = {}   # added state input -> zeros shape factory
        self.notes: list = []
        self.fixed_batch = None
        self.returned_states: set = set()   # values a layer returns through return_state
        self.g_opset = OPSET                # the opset layers converted by tf2onnx are written in
        self.calls: dict = {}               # layer name -> times emitted (shared layers)

    # -- helpers --------------------------------------------------------------------------
    def to(self, v: Val, layout: str) -> Val:
        if v.layout == layout:
            return v
        if {v.layout, layout} in ({"btf", "tbf"}, {"bnf", "tbf"}):
            return Val(self.g.transpose(v.name, [1, 0, 2]), layout, v.mask)
        raise _error(f"internal: cannot convert layout {v.layout} to {layout}")

    def mask_from_indicator(self, ind: str) -> tuple:
        """(indicator [B, T] float 0/1, lengths [B] int32 = unmasked steps per entry)."""
        g = self.g
        shape = g.op("Shape", [ind], name="mask/Shape")
        t = g.op("Slice", [shape, g.ints([1]), g.ints([2])], name="mask/T")
        ones = g.op("ConstantOfShape", [t], name="mask/ones",
                    value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]))
        lens = g.op("MatMul", [ind, ones], name="mask/count")   # [B, T] @ [T] -> [B]
        return ind, g.op("Cast", [lens], name="mask/lens", to=TensorProto.INT32)

    def nonzero_indicator(self, x: str, name: str) -> str:
        """1.0 where x != 0 else 0.0, exactly (through Cast to bool)."""
        b = self.g.op("Cast", [x], name=f"{name}/nonzero", to=TensorProto.BOOL)
        return self.g.op("Cast", [b], name=f"{name}/float", to=TensorProto.FLOAT)

    # -- the walk ---------------------------------------------------------------------------
    def tensor(self, kt) -> Val:
        key = id(kt)
        if key in self.values:
            return self.values[key]
        op, node_index, tensor_index = kt._keras_history
        node = op._inbound_nodes[node_index]
        results = self.layer(op, node)
        for out_kt, val in zip(node.output_tensors, results):
            self.values[id(out_kt)] = val
        if key not in self.values:
            raise _error(f"layer '{op.name}' ({type(op).__name__}): output not produced")
        return self.values[key]

    def layer(self, layer, node) -> list:
        kind = type(layer).__name__
        g = self.g
        args = node.arguments.args
        kwargs = node.arguments.kwargs
        if kind == "InputLayer":
            return [self.graph_input(layer, node.output_tensors[0])]
        inputs = [self.tensor(t) for t in args if hasattr(t, "_keras_history")]
        x = inputs[0] if inputs else None
        name = layer.name
        if kind in ("Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
                    "ActivityRegularization"):
            return [x]                       # inference no-ops
        if kind == "Activation":
            return [Val(self.activation(x.name, layer.activation, name), x.layout, x.mask)]
        if kind == "Dense" or (kind == "TimeDistributed" and type(layer.layer).__name__ == "Dense"):
            dense = layer if kind == "Dense" else layer.layer
            bias = dense.bias.numpy() if dense.use_bias else None
            y = g.matmul_add(x.name, dense.kernel.numpy(), bias, name)
            return [Val(self.activation(y, dense.activation, name), x.layout, x.mask)]
        if kind == "Embedding":
            if x.name in self.specs:
                self.specs[x.name].vocab = layer.input_dim
                self.specs[x.name].pad = "tokens" if layer.mask_zero else None
            idx = g.op("Cast", [x.name], name=f"{name}/ids", to=TensorProto.INT64)
            y = g.op("Gather", [g.const(layer.embeddings.numpy().astype(np.float32), f"{name}.embeddings"), idx],
                     name=f"{name}/Gather")
            mask = self.mask_from_indicator(self.nonzero_indicator(x.name, name)) if layer.mask_zero else None
            return [Val(y, "btf", mask)]
        if kind == "Masking":
            x = self.to(x, "btf")
            if x.name in self.specs:
                self.specs[x.name].pad, self.specs[x.name].mask_value = "value", float(layer.mask_value)
            diff = g.op("Sub", [x.name, g.const(np.float32(layer.mask_value), f"{name}.mask_value")], name=f"{name}/Sub")
            per_feature = self.nonzero_indicator(diff, f"{name}/feat")
            features = layer.input.shape[-1] if getattr(layer, "input", None) is not None else None
            if not isinstance(features, int):
                raise _error(f"layer '{name}' (Masking): the feature size must be known")
            any_feature = g.op("MatMul", [per_feature, g.const(np.ones([features], np.float32), "ones")],
                               name=f"{name}/any")
            ind = self.nonzero_indicator(any_feature, f"{name}/step")
            y = g.op("Mul", [x.name, g.unsqueeze(ind, [-1], name=f"{name}/Unsqueeze")], name=f"{name}/apply")
            return [Val(y, "btf", self.mask_from_indicator(ind))]
        if kind in KERAS_GATES:
            return self.rnn(layer, node, x, kwargs)
        if kind == "Bidirectional":
            return self.bidirectional(layer, node, x, kwargs)
        if kind in ("RNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"):
            raise _error(f"layer '{name}' ({kind}) has no native ONNX recurrent node (tf2onnx would make it a Loop "
                         "that lstmrt cannot stream); use keras.layers.LSTM, GRU or SimpleRNN")
        from . import keras_layers   # everything else: by hand along time, else tf2onnx
        return keras_layers.emit(self, layer, node, inputs)

    def activation(self, x: str, fn, layer_name: str) -> str:
        name = getattr(fn, "__name__", str(fn))
        try:
            return self.g.activation(x, name, layer_name)
        except NotImplementedError:   # the rest (gelu, swish, elu, ...): tf2onnx
            from . import keras_layers
            return keras_layers.activation_layer(self, x, fn, layer_name)

    def graph_input(self, layer, kt) -> Val:
        shape = list(kt.shape)
        dtype = np.dtype(kt.dtype if isinstance(kt.dtype, str) else kt.dtype.name)
        name = layer.name
        if shape[0] is not None:
            self.fixed_batch = shape[0]
        dims = ["B"] + ["T" if i == 1 and d is None else d for i, d in enumerate(shape[1:], start=1)]
        if any(d is None for d in dims):
            raise _error(f"input '{name}' has shape {shape}: only the batch and time axes may be unknown")
        onnx_shape = ["batch" if d == "B" else "time" if d == "T" else d for d in dims]
        elem = helper.np_dtype_to_tensor_dtype(dtype)
        self.g.add_input(name, elem, onnx_shape)
        self.specs[name] = InputSpec(name, dims, dtype=dtype.name)
        layout = {3: "btf", 2: "bt"}.get(len(shape), "bf")
        return Val(name, layout)

    # -- recurrences --------------------------------------------------------------------------
    def _state_in(self, layer_name: str, kind: str, units: int, given) -> str | None:
        """The node's initial state [1, B, H]: from initial_state if given, else a lifted input."""
        g = self.g
        if given is not None:
            return g.unsqueeze(given.name, [0], name=f"{layer_name}/{kind}0")
        if not self.state:
            return None
        name = g.add_input(f"{layer_name}.{kind}_in", TensorProto.FLOAT, ["batch", units])
        self.specs[name] = InputSpec(name, ["B", units], state="added")
        return g.unsqueeze(name, [0], name=f"{layer_name}/{kind}_in")

    def rnn(self, layer, node, x: Val, kwargs) -> list:
        g = self.g
        kind = type(layer).__name__
        name = layer.name
        calls = self.calls[name] = self.calls.get(name, 0) + 1
        if calls > 1:   # a shared layer called again carries its own state
            name = f"{name}_{calls - 1}"
        cell = layer.cell
        units = cell.units
        direction, lbr = _direction(layer)
        if kind == "LSTM":
            acts = [_activation_name(cell.recurrent_activation, name), _activation_name(cell.activation, name),
                    _activation_name(cell.activation, name)]
        elif kind == "GRU":
            acts = [_activation_name(cell.recurrent_activation, name), _activation_name(cell.activation, name)]
        else:
            acts = [_activation_name(cell.activation, name)]
        if getattr(layer, "go_backwards", False):
            raise _error(f"layer '{name}' ({kind}): go_backwards=True outside Bidirectional returns the sequence "
                         "reversed, which lstmrt does not export (and a stream cannot read backwards); reverse the "
                         "input yourself, or wrap the layer in Bidirectional")
        initial = kwargs.get("initial_state")
        initial = [self.tensor(t) for t in initial] if initial is not None else [None] * (2 if kind == "LSTM" else 1)
        if any(v is not None for v in initial) and self.state:
            for v in initial:
                if v is not None and v.name not in self.specs:
                    raise _error(f"layer '{name}' ({kind}): its initial_state is computed inside the model, so the "
                                 "model cannot stream; export it with --no-state (state=False)")
                if v is not None:
                    self.specs[v.name].state = "own"
                    self.specs[v.name].dims = ["B", units]
        xt = self.to(x, "tbf")
        mask = x.mask
        h0 = self._state_in(name, "h", units, initial[0])
        c0 = self._state_in(name, "c", units, initial[1]) if kind == "LSTM" else None
        Y, Yh, Yc = recurrent(g, ONNX_KIND[kind], xt.name, units, [direction], name=name, h0=h0, c0=c0,
                              seq_lens=mask[1] if mask else None, linear_before_reset=lbr, activations=acts)
        y = g.squeeze(Y, [1], name=f"{name}/Y")                  # [T, B, H]
        h = g.squeeze(Yh, [0], name=f"{name}/h")                 # [B, H]
        c = g.squeeze(Yc, [0], name=f"{name}/c") if Yc else None
        if mask and layer.return_sequences and not getattr(layer, "zero_output_for_mask", False):
            # Keras repeats the last valid output at masked (padded) steps; ONNX gives zeros there
            m = g.unsqueeze(g.transpose(mask[0], [1, 0], name=f"{name}/maskT"), [2], name=f"{name}/maskTB1")
            keep = g.op("Mul", [y, m], name=f"{name}/keep")
            rest = g.op("Mul", [g.op("Sub", [g.const(np.float32(1.0), "one"), m], name=f"{name}/inv"), Yh],
                        name=f"{name}/carry")
            y = g.op("Add", [keep, rest], name=f"{name}/Y_masked")
        if self.state:
            for kind_, given, final in (("h", initial[0], h), ("c", initial[1] if kind == "LSTM" else None, c)):
                if final is None:
                    continue
                in_name = given.name if given is not None else f"{name}.{kind_}_in"
                self.state_values[in_name] = (final, units, f"{name}.{kind_}_out")
        out = [Val(y, "tbf", mask) if layer.return_sequences else Val(h, "bf")]
        if layer.return_state:
            out += [Val(h, "bf")] + ([Val(c, "bf")] if c else [])
            self.returned_states.update(v for v in (h, c) if v)
        return out

    def bidirectional(self, layer, node, x: Val, kwargs) -> list:
        g = self.g
        fw, bw = layer.forward_layer, layer.backward_layer
        kind = type(fw).__name__
        name = layer.name
        if kind not in KERAS_GATES or type(bw).__name__ != kind or fw.cell.units != bw.cell.units:
            raise _error(f"layer '{name}' (Bidirectional): both directions must be the same kind of "
                         f"LSTM/GRU/SimpleRNN with the same units (got {kind}, {type(bw).__name__})")
        if kwargs.get("initial_state") is not None:
            raise _error(f"layer '{name}' (Bidirectional): initial_state is not supported")
        if getattr(fw, "go_backwards", False) or not getattr(bw, "go_backwards", True):
            raise _error(f"layer '{name}' (Bidirectional): a forward layer with go_backwards is not supported")
        units = fw.cell.units
        d_fw, lbr = _direction(fw)
        d_bw, lbr_bw = _direction(bw)
        acts = {"LSTM": [fw.cell.recurrent_activation, fw.cell.activation, fw.cell.activation],
                "GRU": [fw.cell.recurrent_activation, fw.cell.activation],
                "SimpleRNN": [fw.cell.activation]}[kind]
        acts = [_activation_name(a, name) for a in acts]
        acts_bw = {"LSTM": [bw.cell.recurrent_activation, bw.cell.activation, bw.cell.activation],
                   "GRU": [bw.cell.recurrent_activation, bw.cell.activation],
                   "SimpleRNN": [bw.cell.activation]}[kind]
        if [_activation_name(a, name) for a in acts_bw] != acts or lbr != lbr_bw:
            raise _error(f"layer '{name}' (Bidirectional): the two directions differ in activations/reset_after")
        xt = self.to(x, "tbf")
        mask = x.mask
        Y, Yh, Yc = recurrent(g, ONNX_KIND[kind], xt.name, units, [d_fw, d_bw], name=name,
                              seq_lens=mask[1] if mask else None, linear_before_reset=lbr, activations=acts)
        mode = layer.merge_mode
        if fw.return_sequences:
            both, tail = Y, "tbf"       # [T, 2, B, H]
        else:
            both, tail = g.unsqueeze(Yh, [0], name=f"{name}/last"), "bf"   # [1, 2, B, H]
        if mode == "concat":
            merged = g.op("Reshape", [g.transpose(both, [0, 2, 1, 3], name=f"{name}/T"), g.ints([0, 0, -1])],
                          name=f"{name}/concat")
        elif mode in ("sum", "ave", "mul"):
            a, b = g.op("Split", [both], name=f"{name}/split", outputs=2, axis=1)
            merged = g.op("Mul" if mode == "mul" else "Add", [a, b], name=f"{name}/{mode}")
            if mode == "ave":
                merged = g.op("Mul", [merged, g.const(np.float32(0.5), "half")], name=f"{name}/ave")
            merged = g.squeeze(merged, [1], name=f"{name}/merged")
        else:
            raise _error(f"layer '{name}' (Bidirectional): merge_mode={mode!r} is not supported "
                         "(concat, sum, ave, mul)")
        if tail == "bf":
            merged = g.squeeze(merged, [0], name=f"{name}/out")
        out = [Val(merged, tail, mask if tail == "tbf" else None)]
        if layer.return_state:
            hs = g.op("Split", [Yh], name=f"{name}/split_h", outputs=2, axis=0)
            states = [g.squeeze(s, [0], name=f"{name}/h") for s in hs]
            if Yc:
                cs = [g.squeeze(s, [0], name=f"{name}/c") for s in g.op("Split", [Yc], name=f"{name}/split_c",
                                                                          outputs=2, axis=0)]
                states = [states[0], cs[0], states[1], cs[1]]
            out += [Val(s, "bf") for s in states]
        return out


def _functional(model):
    if type(model).__name__ == "Sequential":
        if not model.built or getattr(model, "_functional", None) is None:
            raise _error("the Sequential model is not built: give it an Input (keras.Input) or call it once")
        return model._functional
    return model


def _output_names(model) -> list:
    names, seen = [], {}
    for n in model.output_names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        names.append(n if k == 0 else f"{n}_{k}")
    return names


def load(path: str):
    """A Keras model from .keras or .h5 (SavedModel folders go through keras_savedmodel)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    if os.path.isdir(path):
        raise _error(f"'{path}' is a TensorFlow SavedModel: its Keras layers are not recoverable from it "
                     "(Keras 3 cannot load_model a SavedModel); export it with lstmrt.exporters.keras_savedmodel "
                     "or save the model as .keras (model.save('m.keras'))")
    if not os.path.isfile(path):
        raise _error(f"'{path}' does not exist")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:   # Keras raises ValueError/OSError/zipfile errors for bad files
        if "Lambda" in str(e) and "safe_mode" in str(e):
            raise _error(f"'{path}' holds a Lambda layer, whose Python code Keras loads only with safe_mode=False: "
                         "load it yourself (keras.models.load_model(path, safe_mode=False)) if you trust the file, "
                         "and pass the model to lstmrt.exporters.export") from None
        raise _error(f"cannot load Keras model '{path}': {type(e).__name__}: {str(e).splitlines()[0]}") from None


def export(model, example_input=None, state: bool = True):
    from . import Exported
    source = "<keras.Model>"
    if isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        if os.path.isdir(source):   # Keras 3 cannot reload layers from a SavedModel: tf2onnx converts it
            from . import keras_savedmodel
            return keras_savedmodel.export(source, state=state)
        model = load(source)
    import keras
    if not isinstance(model, keras.Model):
        raise _error(f"expected a keras.Model, got {type(model).__name__}")
    functional = _functional(model)
    em, onnx_model, pairs, out_names, out_axes = _emit(functional, state)
    onnx_model, pairs = _stream_through_time_layers(em, functional, onnx_model, pairs, out_axes, state)
    recurrent_layers = [l for l in functional.layers if type(l).__name__ in KERAS_GATES or
                        type(l).__name__ == "Bidirectional"]
    stateful = [l for l in recurrent_layers if getattr(l, "stateful", False)]
    specs = [em.specs[i.name] for i in onnx_model.graph.input]
    input_names = [t.name for t in functional.inputs]

    def reference(feeds):
        for layer in stateful:
            layer.reset_state() if hasattr(layer, "reset_state") else layer.reset_states()
        args = [feeds[n] for n in [l.name for l in _input_layers(functional)]]
        outs = model(args if len(args) > 1 else args[0], training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for layer in stateful:   # leave the model as found: fresh state
            layer.reset_state() if hasattr(layer, "reset_state") else layer.reset_states()
        return {n: np.asarray(o) for n, o in zip(out_names, outs)}
    del input_names
    shapes = None
    steps = getattr(em, "min_steps", 1)   # valid convs/pooling, cropping: shorter inputs are errors in Keras too
    if em.fixed_batch is not None or steps > 1:
        batch = [em.fixed_batch] * 3 if em.fixed_batch is not None else [2, 1, 3]
        shapes = [(batch[0], max(7, steps)), (batch[1], steps), (batch[2], max(12, 2 * steps))]
    if steps > 1:
        em.notes.append(f"the model needs at least {steps} steps (valid convolution/pooling or cropping); "
                        f"verified from T={steps}")
    if em.fixed_batch is not None:
        em.notes.append(f"the Keras model fixes batch={em.fixed_batch}; verified at that batch (the ONNX batch "
                        "axis is dynamic)")
    if stateful:
        em.notes.append(f"stateful layers {[l.name for l in stateful]}: their state is the graph's state "
                        "inputs/outputs (zeros = reset_states())")
    return Exported(onnx_model, specs, pairs, out_axes, reference, "keras", source, em.notes, shapes)


def _emit(functional, state: bool):
    """(emitter, ONNX model, state pairs, output names, output time axes) for the model."""
    em = _Emitter(functional, state)
    recurrent_layers = [l for l in functional.layers if type(l).__name__ in KERAS_GATES or
                        type(l).__name__ == "Bidirectional"]
    if state and any(type(l).__name__ == "Bidirectional" for l in recurrent_layers):
        em.state = False
        em.notes.append("not streamable: a Bidirectional layer reads the future; exported without state")
    out_names = _output_names(functional)
    em.g.claim(out_names)
    out_axes = {}
    for kt, oname in zip(functional.outputs, out_names):
        v = em.tensor(kt)
        if v.layout == "tbf":
            v = em.to(v, "btf")
        rank = len(kt.shape)
        dims = ["batch", "time"] + list(kt.shape[2:]) if v.layout == "btf" else ["batch"] + list(kt.shape[1:])
        em.g.add_output(v.name, oname, TensorProto.FLOAT, dims[:rank])
        out_axes[oname] = 1 if v.layout == "btf" else None
    pairs = {}
    if em.state:
        for in_name, (final, units, default_out) in em.state_values.items():
            # a state the model already returns keeps its output name; else add one
            existing = next((o for o, kt in zip(out_names, functional.outputs)
                             if em.tensor(kt).name == final and final in em.returned_states), None)
            out = existing or em.g.add_output(final, default_out, TensorProto.FLOAT, ["batch", units])
            pairs[in_name] = out
            out_axes.setdefault(out, None)
    return em, em.g.model(state_pairs_metadata(pairs)), pairs, out_names, out_axes


def _stream_through_time_layers(em, functional, onnx_model, pairs: dict, out_axes: dict, state: bool):
    """Causal convolutions' context lifted as state and strides recorded (time_layers.py); a
    layer that looks ahead makes the model plain: emitted again without state, the reason noted."""
    from . import time_layers
    if not (state and em.state):
        return onnx_model, pairs
    seq_inputs = {n: (s.dims.index("B"), s.dims.index("T")) for n, s in em.specs.items()
                  if not s.state and "B" in s.dims and "T" in s.dims}
    _, problems = time_layers.find(onnx_model, seq_inputs)
    if problems:
        plain_em, plain, _, _, plain_axes = _emit(functional, False)
        time_layers.mark_not_streamable(plain, problems[0])
        em.specs = plain_em.specs
        em.notes.extend(f"not streamable: {p}; exported without state" for p in problems)
        out_axes.clear()
        out_axes.update(plain_axes)
        return plain, {}
    onnx_model, pairs, notes = time_layers.prepare(onnx_model, True, seq_inputs, lambda m: (m, dict(pairs), []))
    em.notes.extend(notes)
    for inp, out in pairs.items():
        if inp not in em.specs:   # a lifted context: zeros of its declared shape
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else "B"
                    for d in next(i for i in onnx_model.graph.input if i.name == inp).type.tensor_type.shape.dim]
            em.specs[inp] = InputSpec(inp, dims, state="added")
            out_axes.setdefault(out, None)
    return onnx_model, pairs


def _input_layers(functional) -> list:
    return [t._keras_history[0] for t in functional.inputs]
