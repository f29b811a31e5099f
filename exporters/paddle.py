"""Paddle -> ONNX: paddle2onnx on what paddle.jit.save wrote, then the recurrent state lifted
by `streamify`.

paddle2onnx emits nn.LSTM/GRU/SimpleRNN layers as native ONNX nodes, one per layer and
direction group (layout 0, dynamic axes, GRU linear_before_reset=1); its zero initial
states are replaced by state inputs.  paddle2onnx's default optimize_tool="polygraphy" is
kept: without it the graph comes out unsorted with dangling names.  polygraphy sets
POLYGRAPHY_AUTOINSTALL_DEPS=1 and pip-installs onnx_graphsurgeon (and sympy) at export time
unless they are installed, so lstmrt[paddle] pins them: then no network is needed.
paddle2onnx writes only the last layer's final state of a stacked RNN; `_restack_states`
rebuilds the [layers*dirs, B, H] output from every layer's node.

Gate orders (for reference; paddle2onnx applies them): paddle LSTM i f g o (as torch) ->
ONNX i o f c; paddle GRU r z c (as torch) -> ONNX z r h, linear_before_reset=1.

paddle and paddle2onnx are imported only inside functions.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile

import numpy as np
import onnx

OPSET = 14


def _error(message):
    from . import ExportError
    return ExportError(message)


def _files(path: str) -> tuple[str, str, str]:
    """(model file, params file, prefix) for a .json/.pdmodel path; checks both exist."""
    prefix, ext = os.path.splitext(path)
    if ext not in (".json", ".pdmodel"):
        raise _error(f"'{path}': expected the .json or .pdmodel file paddle.jit.save wrote")
    if not os.path.isfile(path):
        raise _error(f"'{path}' does not exist")
    params = prefix + ".pdiparams"
    if not os.path.isfile(params):
        raise _error(f"'{params}' is missing: paddle.jit.save writes it beside '{os.path.basename(path)}'")
    return path, params, prefix


def load(path: str):
    """The saved program as a callable layer (paddle.jit.load)."""
    import paddle
    _, _, prefix = _files(path)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return paddle.jit.load(prefix)
    except Exception as e:
        raise _error(f"cannot load the Paddle model '{path}': {type(e).__name__}: "
                     f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None


def _convert(model_file: str, params_file: str) -> onnx.ModelProto:
    import paddle2onnx
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "model.onnx")
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                paddle2onnx.export(model_file, params_file, save_file=out, opset_version=OPSET,
                                   auto_upgrade_opset=False, enable_onnx_checker=True)
        except Exception as e:
            raise _error(f"paddle2onnx could not convert '{model_file}': {type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
        if not os.path.isfile(out):
            raise _error(f"paddle2onnx wrote nothing for '{model_file}' (an unsupported op? see its log above)")
        model = onnx.load(out)
    known = ({i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
             | {o for n in model.graph.node for o in n.output})
    dangling = sorted({i for n in model.graph.node for i in n.input if i and i not in known})
    if dangling:
        ops = sorted({d.split(".")[2] if d.startswith("p2o.pd_op.") else d for d in dangling})
        raise _error(f"paddle2onnx dropped the Paddle op(s) {ops} (their results {dangling} are used but never "
                     "made); e.g. nn.SimpleRNN is not converted by paddle2onnx 2.1")
    return _restack_states(model)


def _restack_states(model: onnx.ModelProto) -> onnx.ModelProto:
    """Outputs declared [L*D, B, H] but computed from one node's Y_h/Y_c: concatenate the final
    states of the last recurrent nodes (graph order = layer order) until L*D directions."""
    from onnx import helper
    graph = model.graph
    producers = {o: (n, i) for n in graph.node for i, o in enumerate(n.output) if o}
    recurrent = [n for n in graph.node if n.op_type in ("LSTM", "GRU", "RNN")]
    glue = ("Identity", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Concat")
    for out in graph.output:
        dims = out.type.tensor_type.shape.dim
        if len(dims) != 3 or not dims[0].dim_value:
            continue
        v = out.name
        while v in producers and producers[v][0].op_type in glue and producers[v][0].op_type != "Concat":
            v = producers[v][0].input[0]
        if v not in producers or producers[v][0].op_type not in ("LSTM", "GRU", "RNN") or producers[v][1] == 0:
            continue
        node, slot = producers[v]
        ndir = lambda n: 2 if any(a.name == "direction" and a.s == b"bidirectional" for a in n.attribute) else 1
        if dims[0].dim_value <= ndir(node):
            continue
        chain, total = [], 0
        for n in reversed(recurrent[:recurrent.index(node) + 1]):
            if n.op_type != node.op_type or total >= dims[0].dim_value:
                break
            chain.insert(0, n)
            total += ndir(n)
        if total != dims[0].dim_value:
            continue
        finals = []
        for n in chain:
            while len(n.output) <= slot:
                n.output.append("")
            if not n.output[slot]:
                n.output[slot] = f"{n.name}.final_{slot}"
            finals.append(n.output[slot])
        old = f"{out.name}.last_layer_only"
        prod = next(n for n in graph.node if out.name in n.output)
        prod.output[list(prod.output).index(out.name)] = old
        graph.node.append(helper.make_node("Concat", finals, [out.name], axis=0, name=f"{out.name}.restack"))
    return model


def _save_layer(layer, example_input, tmp: str) -> str:
    import paddle
    from paddle.static import InputSpec
    if example_input is None:
        raise _error("an in-memory paddle.nn.Layer needs example_input (its input shapes are not in the layer)")
    values = example_input if isinstance(example_input, (tuple, list)) else [example_input]
    specs = []
    for i, v in enumerate(values):
        v = np.asarray(v.numpy() if hasattr(v, "numpy") else v)
        shape = [None, None] + list(v.shape[2:]) if i == 0 else [v.shape[0], None] + list(v.shape[2:])
        specs.append(InputSpec(shape, str(v.dtype), f"x{i}" if i else "x"))
    layer.eval()
    prefix = os.path.join(tmp, "model")
    with contextlib.redirect_stdout(io.StringIO()):
        paddle.jit.save(layer, prefix, input_spec=specs)
    return prefix + (".json" if os.path.exists(prefix + ".json") else ".pdmodel")


def export(model, example_input=None, state: bool = True):
    import paddle
    from . import Exported, _specs_from_graph
    from .streamify import StreamifyError, streamify
    paddle.set_device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(model, (str, os.PathLike)):
            source = os.fspath(model)
            model_file, params_file, _ = _files(source)
        else:
            if not isinstance(model, paddle.nn.Layer):
                raise _error(f"expected a paddle.nn.Layer, got {type(model).__name__}")
            source = "<paddle.nn.Layer>"
            model_file = _save_layer(model, example_input, tmp)
            params_file = os.path.splitext(model_file)[0] + ".pdiparams"
        layer = load(model_file)
        onnx_model = _convert(model_file, params_file)
    original_inputs = [i.name for i in onnx_model.graph.input]
    notes, pairs = [], {}
    if state:
        try:
            onnx_model, pairs = streamify(onnx_model)
        except StreamifyError as e:
            notes.append(f"not streamable: {e}; exported without state")
    specs, out_axes = _specs_from_graph(onnx_model, pairs, set(original_inputs))
    _token_vocab(onnx_model, specs)
    out_names = [o.name for o in onnx_model.graph.output if o.name not in pairs.values()]

    def reference(feeds):
        args = [paddle.to_tensor(feeds[n]) for n in original_inputs]
        with paddle.no_grad():
            got = layer(*args)
        got = got if isinstance(got, (list, tuple)) else [got]
        return {n: g.numpy() for n, g in zip(out_names, got)}
    return Exported(onnx_model, specs, pairs, out_axes, reference, "paddle", source, notes)


def _token_vocab(model: onnx.ModelProto, specs: list) -> None:
    """Integer inputs that index an embedding table: token ids drawn below the table's size, [B, T]."""
    tables = {t.name: list(t.dims) for t in model.graph.initializer}
    for s in specs:
        if np.dtype(s.dtype).kind not in "iu":
            continue
        for node in model.graph.node:
            if node.op_type == "Gather" and len(node.input) > 1 and node.input[0] in tables:
                # the ids reach the Gather through Casts/Identities
                s.vocab = tables[node.input[0]][0]
        if "B" not in s.dims and len(s.dims) >= 2:
            s.dims = ["B", "T"] + s.dims[2:]
