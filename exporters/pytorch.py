"""PyTorch -> ONNX: torch.onnx's TorchScript exporter (dynamo=False), then the recurrent
state lifted by `streamify`.

Why the legacy exporter: it emits every nn.LSTM/GRU/RNN layer as a native ONNX node
(layout 0, batch/time axes dynamic, GRU linear_before_reset=1) and traces any forward();
the dynamo exporter fixes T for stacked/bidirectional RNNs and drops linear_before_reset.
Its only recurrent quirk is building zero initial states from Shape/ConstantOfShape when the
model takes none; `streamify` replaces those with state inputs.  `finish` then refuses any
result that holds Loop/Scan or layout=1 nodes.

Names: inputs are the forward's argument names; lifted state is named by the module path
(`_name_recurrent_nodes`), and an output returning the final value of a state argument `h0`
is `h0_out` (`streamify.name_returned_states`), whether the model was scripted, traced or eager.

Gate orders (for reference; torch.onnx applies them): torch LSTM i f g o -> ONNX i o f c;
torch GRU r z n -> ONNX z r h, with b_hn inside r * (W_hn h + b_hn), i.e. linear_before_reset=1.

torch is imported only inside functions.
"""
from __future__ import annotations

import inspect
import io
import os
import warnings

import numpy as np
import onnx

from .verify import InputSpec

RECURRENT = ("LSTM", "GRU", "RNN")
OPSET = 14


def _error(message):
    from . import ExportError
    return ExportError(message)


def load(path: str):
    import torch
    if not os.path.isfile(path):
        raise _error(f"'{path}' does not exist")
    try:
        return torch.jit.load(path, map_location="cpu")
    except Exception as e:   # RuntimeError for anything that is not a TorchScript zip
        raise _error(f"'{path}' is not a TorchScript archive (write one with torch.jit.save(torch.jit.script(model) "
                     f"or torch.jit.trace(model, x), path)): {str(e).strip().splitlines()[0]}") from None


def _kind(module) -> str:
    return getattr(module, "original_name", None) or type(module).__name__


def _modules(model) -> list:
    return [(n, m) for n, m in model.named_modules() if n]


def _first(model, kinds):
    return next((m for _, m in _modules(model) if _kind(m) in kinds), None)


def _arg_names(model) -> list:
    """The forward's parameter names and whether each is a tuple, from the signature or TorchScript schema."""
    schema = getattr(getattr(model, "forward", None), "schema", None)
    if schema is not None:
        return [(a.name, str(a.type).startswith("Tuple"), "Optional" in str(a.type) or a.has_default_value())
                for a in schema.arguments[1:]]
    params = inspect.signature(model.forward).parameters.values()
    return [(p.name, False, p.default is not inspect.Parameter.empty) for p in params
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _rnn_info(rec) -> tuple:
    """(input_size, hidden_size, layers * directions, batch_first) of an RNN module; a traced
    TorchScript module keeps no attributes, so read its parameters and its aten:: call."""
    params = dict(rec.named_parameters())
    w_ih, w_hh = params["weight_ih_l0"], params["weight_hh_l0"]
    layers = sum(1 for n in params if n.startswith("weight_ih_l"))
    batch_first = getattr(rec, "batch_first", None)
    if batch_first is None:
        batch_first = False
        graph = getattr(rec, "graph", None)
        for node in (graph.nodes() if graph is not None else []):
            if node.kind() in ("aten::lstm", "aten::gru", "aten::rnn_tanh", "aten::rnn_relu"):
                batch_first = bool(list(node.inputs())[-1].toIValue())
    return int(w_ih.shape[1]), int(w_hh.shape[1]), layers, bool(batch_first)


def _example(model, example_input):
    """[(name, array, InputSpec dims)] for the forward's tensor arguments."""
    rec = _first(model, RECURRENT)
    if rec is None:
        raise _error("the model has no nn.LSTM, nn.GRU or nn.RNN layer")
    input_size, hidden, layers, batch_first = _rnn_info(rec)
    emb = _first(model, ("Embedding",))
    vocab = int(dict(emb.named_parameters())["weight"].shape[0]) if emb is not None else None
    seq_dims = ["B", "T"] if batch_first else ["T", "B"]
    args = _arg_names(model)
    if example_input is not None:
        values = example_input if isinstance(example_input, (tuple, list)) else [example_input]
        if isinstance(example_input, dict):
            values = [example_input[n] for n, _, _ in args if n in example_input]
        out = []
        for i, ((name, _, _), v) in enumerate(zip(args, values)):
            v = np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
            dims = (seq_dims + list(v.shape[2:])) if i == 0 else [layers, "B", hidden]
            out.append((name, v, dims))
        return out, vocab
    required = [(n, is_tuple) for n, is_tuple, optional in args if not optional]
    if not required:
        raise _error("cannot tell the model's inputs from its forward(); pass example_input")
    out = []
    shape = {"B": 2, "T": 5}
    if emb is not None:
        x = np.ones([shape[d] for d in seq_dims], np.int64)
        out.append((required[0][0], x, list(seq_dims)))
    else:
        x = np.zeros([shape[d] for d in seq_dims] + [_input_features(model, input_size)], np.float32)
        out.append((required[0][0], x, seq_dims + [x.shape[-1]]))
    for name, is_tuple in required[1:]:
        state = np.zeros([layers, 2, hidden], np.float32)
        if is_tuple:
            out += [(f"{name}_{k}", state, [layers, "B", hidden]) for k in range(2)]
        else:
            out.append((name, state, [layers, "B", hidden]))
    return out, vocab


def _input_features(model, rnn_input_size: int) -> int:
    """Features per step of the model's input: those of its first layer (a conv or linear
    front-end before the recurrence), else the recurrent layer's input size."""
    for _, module in _modules(model):
        kind = _kind(module)
        if kind in RECURRENT:
            return rnn_input_size
        weight = dict(module.named_parameters(recurse=False)).get("weight")
        if kind in ("Conv1d", "Linear") and weight is not None:
            groups = getattr(module, "groups", 1) if kind == "Conv1d" else 1
            return int(weight.shape[1]) * int(groups if isinstance(groups, int) else 1)
    return rnn_input_size


def export(model, example_input=None, state: bool = True):
    import torch
    from . import Exported
    from . import time_layers
    from .streamify import lift_state_or_note, name_returned_states
    source = "<torch.nn.Module>"
    if isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        model = load(source)
    if not isinstance(model, torch.nn.Module):
        raise _error(f"expected a torch.nn.Module, got {type(model).__name__}")
    model.eval()
    unsupported = [(n, _kind(m)) for n, m in _modules(model)
                   if _kind(m) in ("LSTMCell", "GRUCell", "RNNCell")]
    if unsupported:
        raise _error(f"layer '{unsupported[0][0]}' ({unsupported[0][1]}): a cell stepped in a Python loop does not "
                     "become a native recurrent node; use nn.LSTM/nn.GRU/nn.RNN")
    _refuse_what_onnx_cannot_express(model)
    inputs, vocab = _example(model, example_input)
    names = [n for n, _, _ in inputs]
    tensors = [torch.from_numpy(np.ascontiguousarray(v)) for _, v, _ in inputs]
    dynamic = {n: {i: ("batch" if d == "B" else "time") for i, d in enumerate(dims) if d in ("B", "T")}
               for n, _, dims in inputs}
    try:
        with torch.no_grad():
            outs = model(*tensors)
    except Exception as e:   # e.g. an input guessed from the first layer that the model does not take
        shapes = ", ".join(f"{n}{list(t.shape)}" for n, t in zip(names, tensors))
        raise _error(f"the model fails on the example input {shapes} ({type(e).__name__}: "
                     f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
                     + ("the input was guessed from the first layer: pass example_input" if example_input is None
                        else "check example_input")
                     + ", an array the model takes (from the command line: export the model from Python)") from None
    flat = _flatten(outs)
    out_names = ["output"] if len(flat) == 1 else [f"output_{i}" for i in range(len(flat))]
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, tuple(tensors), buffer, input_names=names, output_names=out_names,
                              dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True, dynamo=False)
    except Exception as e:
        raise _error(f"torch.onnx could not export the model: {type(e).__name__}: "
                     f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
    onnx_model = onnx.load_from_string(buffer.getvalue())
    _name_recurrent_nodes(onnx_model, model)
    renamed = name_returned_states(onnx_model, names, out_names)
    out_names = [renamed.get(n, n) for n in out_names]
    seq_inputs = {n: (dims.index("B"), dims.index("T")) for n, _, dims in inputs if "B" in dims and "T" in dims}
    steps = time_layers.min_steps(onnx_model, seq_inputs)   # before lifting: a lifted context pads nothing
    onnx_model, pairs, notes = time_layers.prepare(onnx_model, state, seq_inputs,
                                                   lambda m: lift_state_or_note(m, True))
    specs = []
    for name, v, dims in inputs:
        own = name in pairs
        specs.append(InputSpec(name, dims, dtype=v.dtype.name, vocab=vocab if v.dtype.kind in "iu" else None,
                               state="own" if own else None))
    graph_inputs = {i.name for i in onnx_model.graph.input}
    for inp in onnx_model.graph.input:
        if inp.name in pairs and inp.name not in names:
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else "B"
                    for d in inp.type.tensor_type.shape.dim]
            specs.append(InputSpec(inp.name, dims, state="added"))
    specs = [s for s in specs if s.name in graph_inputs]

    def reference(feeds):
        args = [torch.from_numpy(feeds[n]) for n in names]
        with torch.no_grad():
            got = _flatten(model(*args))
        return {n: g.numpy() for n, g in zip(out_names, got)}
    if steps > 1:
        notes.append(f"the model needs at least {steps} steps (its convolutions/pooling); verified from T={steps}")
    return Exported(onnx_model, specs, pairs, {}, reference, "torch", source, notes,
                    shapes=time_layers.shapes_from(steps))


def _refuse_what_onnx_cannot_express(model) -> None:
    """Layers torch.onnx would fail on (or turn into loops), refused in words that say what to do."""
    for name, module in _modules(model):
        params = {n for n, _ in module.named_parameters(recurse=False)}
        if _kind(module) == "LSTM" and any(p.startswith("weight_hr_l") for p in params):
            proj = int(dict(module.named_parameters())["weight_hr_l0"].shape[0])
            raise _error(f"layer '{name}' (LSTM, proj_size={proj}): an LSTM with a projection feeds the projected "
                         "state back into its gates, which ONNX's LSTM node cannot express; train it with "
                         "proj_size=0 (and a nn.Linear after it if a smaller output is wanted)")


def _name_recurrent_nodes(onnx_model, model) -> None:
    """Name each recurrent node by the module path the user wrote ('lstm', or 'lstm.l1' for a
    stacked layer), so lifted state is 'lstm.h_in' whether the model was scripted or traced
    (torch.onnx names nodes '/LSTM' for one and '/lstm/LSTM' for the other).  Nodes are matched
    to modules by their recurrent weights, which torch.onnx copies with the gates reordered:
    the sorted values are the same."""
    from onnx import numpy_helper
    graph = onnx_model.graph
    constants = {t.name: t for t in graph.initializer}
    constants.update({n.output[0]: a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute
                      if a.name == "value"})
    known = []
    for path, module in _modules(model):
        if _kind(module) not in RECURRENT:
            continue
        params = dict(module.named_parameters())
        layers = sorted(n for n in params if n.startswith("weight_hh_l") and not n.endswith("_reverse"))
        for layer in layers:
            name = path if len(layers) == 1 else f"{path}.l{layer[len('weight_hh_l'):]}"
            known.append((np.sort(params[layer].detach().cpu().numpy().ravel()), name))
    for node in graph.node:
        if node.op_type not in RECURRENT or len(node.input) < 3 or node.input[2] not in constants:
            continue
        weights = np.sort(numpy_helper.to_array(constants[node.input[2]])[0].ravel())
        matches = [name for fingerprint, name in known
                   if fingerprint.shape == weights.shape and np.array_equal(fingerprint, weights)]
        if len(matches) == 1:
            node.name = matches[0]


def _flatten(value) -> list:
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flatten(v)]
    return [value]
