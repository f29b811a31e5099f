"""Paddle -> ONNX: paddle2onnx on what paddle.jit.save wrote, then the recurrent state lifted
by `streamify`.

paddle2onnx emits nn.LSTM/GRU layers as native ONNX nodes, one per layer and direction group
(layout 0, dynamic axes, GRU linear_before_reset=1); its zero initial states are replaced by
state inputs.  paddle2onnx 2.1 silently drops nn.SimpleRNN (the program's `rnn` op in mode
RNN_TANH/RNN_RELU): its results are left as dangling names.  `_graft_rnns` reads that op from
the saved program (attributes, operands, weights) and grafts native ONNX RNN nodes, one per
layer, that make exactly those names.  paddle2onnx's default optimize_tool="polygraphy" is
kept: without it the graph comes out unsorted with dangling names.  polygraphy sets
POLYGRAPHY_AUTOINSTALL_DEPS=1 and pip-installs onnx_graphsurgeon (and sympy) at export time
unless they are installed, so lstmrt[paddle] pins them: then no network is needed.
paddle2onnx writes only the last layer's final state of a stacked RNN; `_restack_states`
rebuilds the [layers*dirs, B, H] output from every layer's node.

Names: each recurrent node is renamed after the layer the user wrote (its sublayer path, for an
in-memory nn.Layer; the layer classes Paddle recorded, for a saved program), so lifted state is
`lstm.h_in`, `lstm.l1.c_in`; an in-memory layer's inputs keep its forward's argument names, and
a state the model takes and returns pairs `h0` with `h0_out`.

Gate orders (for reference; paddle2onnx applies them): paddle LSTM i f g o (as torch) ->
ONNX i o f c; paddle GRU r z c (as torch) -> ONNX z r h, linear_before_reset=1.  SimpleRNN
(grafted here): see PADDLE_GATES.

paddle and paddle2onnx are imported only inside functions.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import os
import re
import sys
import tempfile

import numpy as np
import onnx

OPSET = 14

# Paddle's `rnn` op modes that paddle2onnx drops, and the activation of the grafted ONNX RNN.
RNN_MODES = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}

# The weight convention, Paddle -> ONNX, written once.  nn.SimpleRNN holds weight_ih_l{k}[_reverse]
# [H, I], weight_hh_l{k} [H, H], bias_ih_l{k}, bias_hh_l{k} [H]; in the saved program they are the
# parameters simple_rnn_cell_{n}.w_0 / w_1 / b_0 / b_1, and the `rnn` op takes them as one list:
# every (layer, direction)'s [w_ih, w_hh] (layer-major, forward before reverse), then every one's
# [b_ih, b_hh] in the same order.  ONNX RNN wants W [D, H, I] = w_ih, R [D, H, H] = w_hh,
# B [D, 2H] = [b_ih, b_hh] (Wb then Rb).  Gate order, source -> ONNX (onnx_build.ONNX_GATES):
# one gate, so nothing moves, but it goes through reorder_gates like every other cell.
PADDLE_GATES = {"RNN": "h"}


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


@contextlib.contextmanager
def _captured(log: list):
    """Python's and the C++ libraries' stdout/stderr (file descriptors 1 and 2) into `log[0]`:
    paddle2onnx reports a graph it left dangling as "[ERROR] ... invalid" even when the
    export then rebuilds it, and paddle's executor logs to stderr."""
    with tempfile.TemporaryFile("w+b") as sink, contextlib.redirect_stdout(io.StringIO()) as py:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            log[:] = [py.getvalue() + sink.read().decode(errors="replace")]


def _convert(model_file: str, params_file: str) -> onnx.ModelProto:
    import paddle2onnx
    log = [""]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "model.onnx")
        try:
            with _captured(log):
                paddle2onnx.export(model_file, params_file, save_file=out, opset_version=OPSET,
                                   auto_upgrade_opset=False, enable_onnx_checker=True)
        except Exception as e:
            raise _error(f"paddle2onnx could not convert '{model_file}': {type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}\n{log[0][-2000:]}") from None
        if not os.path.isfile(out):
            raise _error(f"paddle2onnx wrote nothing for '{model_file}' (an unsupported op?); its log:\n"
                         f"{log[0][-2000:]}")
        model = onnx.load(out)
    if _dangling(model):
        model = _graft_rnns(model, model_file)
    dangling = _dangling(model)
    if dangling:
        ops = sorted({d.split(".")[2] if d.startswith("p2o.pd_op.") else d for d in dangling})
        legacy = (" (SimpleRNN is rebuilt only in PIR .json programs, which paddle.jit.save of paddle 3 writes)"
                  if model_file.endswith(".pdmodel") else "")
        raise _error(f"paddle2onnx dropped the Paddle op(s) {ops} (their results {dangling} are used but never "
                     f"made) and lstmrt cannot rebuild them{legacy}")
    return _restack_states(model)


def _dangling(model: onnx.ModelProto) -> list:
    """Names nodes or outputs use that nothing makes."""
    known = ({i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
             | {o for n in model.graph.node for o in n.output})
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    return sorted(u for u in used if u and u not in known)


def _program_rnn_ops(model_file: str) -> list:
    """Every `rnn` op of the saved program's main block, in order, as a dict: its attributes,
    the ONNX names paddle2onnx gave its input and initial-state operands, and its weights.

    paddle2onnx names the k-th result of the n-th op of a kind (counted over the block, in
    order) `p2o.<op>.<n>.<k>`, a graph input by its name and a parameter by its name."""
    import paddle
    prefix = os.path.splitext(model_file)[0]
    dynamic = paddle.in_dynamic_mode()
    paddle.enable_static()
    try:
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope), _captured([""]):
            exe = paddle.static.Executor(paddle.CPUPlace())
            program, _, _ = paddle.static.load_inference_model(prefix, exe)
        ops = list(program.global_block().ops)
        if not all(hasattr(op, "name") and callable(op.name) for op in ops):
            raise _error(f"'{model_file}' is not a PIR program (paddle.jit.save of paddle >= 3 writes one as .json); "
                         "cannot read its rnn ops")
        results = []   # (value, the ONNX name paddle2onnx gave it)
        counts: dict = {}
        for op in ops:
            n = counts[op.name()] = counts.get(op.name(), -1) + 1
            results.extend((r, f"p2o.{op.name()}.{n}.{k}") for k, r in enumerate(op.results()))

        def onnx_name(value) -> str | None:
            op = value.get_defining_op()
            if op is None:
                return None
            if op.name() == "pd_op.data":
                return op.attrs()["name"]
            if op.name() == "builtin.parameter":
                return op.attrs()["parameter_name"]
            return next((name for r, name in results if r.is_same(value)), None)

        def listed(value) -> list:
            op = value.get_defining_op()
            if op is None or op.name() != "builtin.combine":
                return [value]
            return list(op.operands_source())

        def array(value) -> np.ndarray:
            op = value.get_defining_op()
            if op is None or op.name() != "builtin.parameter":
                raise _error(f"a weight of the Paddle rnn op is computed ({op.name() if op else 'nothing'}), "
                             "not a parameter; cannot read it")
            name = op.attrs()["parameter_name"]
            var = scope.find_var(name)
            if var is None:
                raise _error(f"the Paddle rnn op's weight '{name}' is not in the saved parameters")
            return np.array(var.get_tensor(), dtype=np.float32)

        found = []
        for op in ops:
            if op.name() != "pd_op.rnn":
                continue
            attrs = op.attrs()
            operands = list(op.operands_source())
            x, pre_state, weights = operands[0], operands[1], operands[2]
            seq = operands[3] if len(operands) > 3 else None
            found.append({
                "attrs": attrs, "x": onnx_name(x), "w_hh": _forward_w_hh(attrs, listed(weights), array),
                "states": [onnx_name(v) for v in listed(pre_state)],
                "weights": [array(v) for v in listed(weights)] if attrs.get("mode") in RNN_MODES else [],
                "seq_lens": seq is not None and seq.initialized(),
                "struct": attrs.get("struct_name", "").strip("/") or "rnn"})
        return found
    finally:
        if dynamic:
            paddle.disable_static()


def _forward_w_hh(attrs, weights: list, array) -> list:
    """Each layer's forward-direction recurrent weight [gates*H, H] of an `rnn` op (its weight list
    holds every (layer, direction)'s [w_ih, w_hh] first), or [] where they cannot be read."""
    from . import ExportError
    dirs = 2 if attrs.get("is_bidirec") else 1
    try:
        return [array(weights[2 * k * dirs + 1]) for k in range(int(attrs["num_layers"]))]
    except (ExportError, IndexError, KeyError):
        return []


def _graft_rnns(model: onnx.ModelProto, model_file: str) -> onnx.ModelProto:
    """Make the dangling results of the program's SimpleRNN `rnn` ops with native ONNX RNN nodes
    (one per layer, bidirectional where the layer is): Y `p2o.pd_op.rnn.<n>.0` [T, B, D*H]
    (time-major, as the op), final states `p2o.pd_op.rnn.<n>.2_0` [L*D, B, H].  <n> counts
    every rnn op (LSTM and GRU ones too) in program order, as paddle2onnx does."""
    from .onnx_build import ONNX_GATES, Direction, Graph, recurrent, reorder_gates
    dangling = _dangling(model)
    wanted: dict = {}
    for name in dangling:
        parts = name.split(".")
        if name.startswith("p2o.pd_op.rnn.") and len(parts) == 5 and parts[3].isdigit():
            wanted.setdefault(int(parts[3]), []).append(name)
    if not wanted:
        return model
    from . import ExportError
    try:
        rnn_ops = _program_rnn_ops(model_file)
    except ExportError:
        raise
    except Exception as e:   # paddle raises ValueError, RuntimeError, its own errors ...
        raise _error(f"paddle2onnx dropped the Paddle rnn op(s) (nn.SimpleRNN) and lstmrt cannot read them from "
                     f"'{model_file}': {type(e).__name__}: {str(e).strip()[:300]}") from None
    graph = model.graph
    g = Graph()
    # names in the model stay out of the builder's fresh ones; the dangling ones are ours to make
    g._used.update({i.name for i in graph.input} | {t.name for t in graph.initializer}
                   | {v for n in graph.node for v in list(n.input) + list(n.output)} | {n.name for n in graph.node})
    g._used.difference_update(dangling)
    g.claim(dangling)
    known = ({i.name for i in graph.input} | {t.name for t in graph.initializer}
             | {o for x in graph.node for o in x.output})
    for n, names in sorted(wanted.items()):
        if n >= len(rnn_ops):
            raise _error(f"paddle2onnx dropped Paddle rnn op #{n}, which the saved program does not have")
        op = rnn_ops[n]
        attrs, layer = op["attrs"], op["struct"]
        mode = attrs.get("mode")
        if mode not in RNN_MODES:
            raise _error(f"paddle2onnx dropped the Paddle rnn op of layer '{layer}' (mode {mode}); "
                         f"only SimpleRNN modes {sorted(RNN_MODES)} are rebuilt")
        if op["seq_lens"]:
            raise _error(f"layer '{layer}' (nn.SimpleRNN) is called with sequence_length, which lstmrt does not "
                         "rebuild; call it without (the state then runs over padding too)")
        for ref in [op["x"], *op["states"]]:
            if ref is None or ref not in known:
                raise _error(f"layer '{layer}' (SimpleRNN): cannot find its operand '{ref}' in paddle2onnx's output")
        layers, hidden = int(attrs["num_layers"]), int(attrs["hidden_size"])
        dirs = 2 if attrs.get("is_bidirec") else 1
        weights = op["weights"]
        if len(weights) != 4 * layers * dirs:
            raise _error(f"layer '{layer}' (SimpleRNN): {len(weights)} weights, expected {4 * layers * dirs}")
        base = f"SimpleRNN.{n}"     # node and value names (the state inputs are named after the nodes)
        x, finals = op["x"], []
        state0 = op["states"][0] if op["states"] else None
        for k in range(layers):
            directions = []
            for d in range(dirs):
                c = k * dirs + d
                w_ih, w_hh = weights[2 * c], weights[2 * c + 1]
                b_ih, b_hh = weights[2 * layers * dirs + 2 * c], weights[2 * layers * dirs + 2 * c + 1]
                if w_ih.shape[0] != hidden or w_hh.shape != (hidden, hidden) or b_ih.shape != (hidden,):
                    raise _error(f"layer '{layer}' (SimpleRNN): weight shapes {w_ih.shape}, {w_hh.shape}, "
                                 f"{b_ih.shape} do not match hidden_size {hidden}")
                src, dst = PADDLE_GATES["RNN"], ONNX_GATES["RNN"]
                directions.append(Direction(W=reorder_gates(w_ih, src, dst), R=reorder_gates(w_hh, src, dst),
                                            Wb=reorder_gates(b_ih, src, dst), Rb=reorder_gates(b_hh, src, dst)))
            h0 = None
            if state0 is not None:   # this layer's [D, B, H] of the op's [L*D, B, H] initial state
                h0 = g.op("Slice", [state0, g.ints([k * dirs]), g.ints([(k + 1) * dirs]), g.ints([0])],
                          name=f"{base}.l{k}.h0")
            y, y_h, _ = recurrent(g, "RNN", x, hidden, directions, name=f"{base}.l{k}", h0=h0,
                                  activations=[RNN_MODES[mode]])
            finals.append(y_h)
            # Y [T, D, B, H] -> [T, B, D*H], the next layer's input and the op's output
            x = g.op("Reshape", [g.transpose(y, [0, 2, 1, 3], name=f"{base}.l{k}.Y_t"), g.ints([0, 0, -1])],
                     name=f"{base}.l{k}.Y_flat")
        for name in names:
            slot = name.split(".", 4)[4]
            if slot == "0":
                g.op("Identity", [x], name=f"{base}.Y", outputs=[name])
            elif slot == "2_0":
                g.op("Concat", finals, name=f"{base}.states", outputs=[name], axis=0)
            else:
                raise _error(f"layer '{layer}' (SimpleRNN): its result '{name}' is used; only the output and "
                             "the final state are rebuilt")
    graph.node.extend(g.nodes)
    graph.initializer.extend(g.initializers)
    _toposort(graph)
    onnx.checker.check_model(model)
    return model


def _toposort(graph) -> None:
    """Order the nodes so each comes after the makers of its inputs (stable otherwise)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise _error(f"the graph has a cycle or unmade inputs at {[n.name for n in rest[:5]]}")
        pending = rest
    copies = [onnx.NodeProto() for _ in ordered]
    for c, node in zip(copies, ordered):
        c.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


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


PROJECTION = ("an LSTM with a projection feeds the projected state back into its gates, which ONNX's LSTM node "
              "cannot express; train it with proj_size=0 (and a nn.Linear after it if a smaller output is wanted)")


def _refuse_layers(layer) -> None:
    """Layers of an in-memory model that ONNX cannot express, refused naming them."""
    from paddle import nn
    for name, sub in layer.named_sublayers():
        if isinstance(sub, nn.LSTM) and getattr(sub, "proj_size", 0):
            raise _error(f"layer '{name}' (nn.LSTM, proj_size={sub.proj_size}): {PROJECTION}")


def _refuse_step_loops(model_file: str) -> None:
    """A saved program that steps a recurrence in a while loop (nn.LSTM with proj_size, nn.RNN over
    a cell) makes paddle2onnx abort the process: refuse it first."""
    import paddle
    dynamic = paddle.in_dynamic_mode()
    paddle.enable_static()
    try:
        with paddle.static.scope_guard(paddle.static.Scope()), _captured([""]):
            program, _, _ = paddle.static.load_inference_model(os.path.splitext(model_file)[0],
                                                               paddle.static.Executor(paddle.CPUPlace()))
        loops = [op for op in program.global_block().ops if callable(getattr(op, "name", None))
                 and op.name() == "pd_op.while"]
    finally:
        if dynamic:
            paddle.disable_static()
    if loops:
        raise _error(f"'{model_file}' steps a recurrence in a while loop (Paddle does that for an nn.LSTM with "
                     f"proj_size > 0, where {PROJECTION.split(';')[0]}, and for nn.RNN over a cell), which has no "
                     "native ONNX LSTM/GRU/RNN node; use nn.LSTM (proj_size=0), nn.GRU or nn.SimpleRNN")


def _arg_names(layer, count: int) -> list:
    """The forward's first `count` parameter names (`x`, `h0`, `c0`): the exported inputs keep
    them; x, x1, x2, ... where the signature does not tell."""
    try:
        params = [p.name for p in inspect.signature(layer.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    if len(params) < count or len(set(params[:count])) < count:
        return ["x"] + [f"x{i}" for i in range(1, count)]
    return params[:count]


def _save_layer(layer, example_input, tmp: str) -> str:
    import paddle
    from paddle.static import InputSpec
    if example_input is None:
        raise _error("an in-memory paddle.nn.Layer needs example_input (its input shapes are not in the layer)")
    values = example_input if isinstance(example_input, (tuple, list)) else [example_input]
    names = _arg_names(layer, len(values))
    specs = []
    for i, v in enumerate(values):
        v = np.asarray(v.numpy() if hasattr(v, "numpy") else v)
        shape = [None, None] + list(v.shape[2:]) if i == 0 else [v.shape[0], None] + list(v.shape[2:])
        specs.append(InputSpec(shape, str(v.dtype), names[i]))
    layer.eval()
    prefix = os.path.join(tmp, "model")
    with contextlib.redirect_stdout(io.StringIO()):
        paddle.jit.save(layer, prefix, input_spec=specs)
    return prefix + (".json" if os.path.exists(prefix + ".json") else ".pdmodel")


def export(model, example_input=None, state: bool = True):
    import paddle
    from . import Exported, _specs_from_graph
    from . import time_layers
    from .streamify import lift_state_or_note, name_returned_states
    paddle.set_device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(model, (str, os.PathLike)):
            source = os.fspath(model)
            model_file, params_file, _ = _files(source)
        else:
            if not isinstance(model, paddle.nn.Layer):
                raise _error(f"expected a paddle.nn.Layer, got {type(model).__name__}")
            source = "<paddle.nn.Layer>"
            _refuse_layers(model)
            model_file = _save_layer(model, example_input, tmp)
            params_file = os.path.splitext(model_file)[0] + ".pdiparams"
        layer = load(model_file)
        _refuse_step_loops(model_file)   # paddle2onnx aborts the process on them
        onnx_model = _convert(model_file, params_file)
        layer_names = _sublayer_weights(model) if source == "<paddle.nn.Layer>" else _program_weights(model_file)
    _name_recurrent_nodes(onnx_model, layer_names)
    name_returned_states(onnx_model, [i.name for i in onnx_model.graph.input],
                         [o.name for o in onnx_model.graph.output])
    original_inputs = [i.name for i in onnx_model.graph.input]
    seq_inputs = time_layers.trace_sequence_axes(onnx_model)
    steps = time_layers.min_steps(onnx_model, seq_inputs)   # before lifting: a lifted context pads nothing
    onnx_model, pairs, notes = time_layers.prepare(onnx_model, state, seq_inputs,
                                                   lambda m: lift_state_or_note(m, True))
    specs, out_axes = _specs_from_graph(onnx_model, pairs, set(original_inputs))
    _token_vocab(onnx_model, specs)
    out_names = [o.name for o in onnx_model.graph.output if o.name not in pairs.values()]

    def reference(feeds):
        args = [paddle.to_tensor(feeds[n]) for n in original_inputs]
        with paddle.no_grad():
            got = layer(*args)
        got = got if isinstance(got, (list, tuple)) else [got]
        return {n: g.numpy() for n, g in zip(out_names, got)}
    if steps > 1:
        notes.append(f"the model needs at least {steps} steps (its convolutions/pooling); verified from T={steps}")
    return Exported(onnx_model, specs, pairs, out_axes, reference, "paddle", source, notes,
                    shapes=time_layers.shapes_from(steps))


def _layer_name(path: str, layer: int, layers: int) -> str:
    return path if layers == 1 else f"{path}.l{layer}"


def _sublayer_weights(model) -> list:
    """[(each layer's forward recurrent weight, its name)] of an in-memory layer: the sublayer
    path the user wrote ('lstm', 'block.gru', 'rnn.l1' for the second layer of a stacked one)."""
    from paddle import nn
    found = []
    for path, sub in model.named_sublayers():
        if not isinstance(sub, (nn.LSTM, nn.GRU, nn.SimpleRNN)):
            continue
        params = dict(sub.named_parameters())
        layers = sorted((n for n in params if n.startswith("weight_hh_l") and not n.endswith("_reverse")),
                        key=lambda n: int(n[len("weight_hh_l"):]))
        found += [(params[n].numpy(), _layer_name(path, k, len(layers))) for k, n in enumerate(layers)]
    return found


def _program_weights(model_file: str) -> list:
    """The same for a saved program, which keeps no attribute names: each rnn op is named by the
    path of layer classes Paddle recorded in it (its struct_name, '/Encoder_3/LSTM_7/'), without
    the instance counters, which count every layer made in the saving process so far
    ('Encoder.LSTM'); where several ops share that path, '_0', '_1', ... in program order.
    [] for a program whose rnn ops cannot be read (a legacy .pdmodel): paddle2onnx's names stay."""
    try:
        ops = _program_rnn_ops(model_file)
    except Exception:   # ExportError for a legacy program, paddle's own errors: the names are a nicety
        return []
    paths = [".".join(re.sub(r"_\d+$", "", part) for part in op["struct"].split("/") if part) or "rnn"
             for op in ops]
    found = []
    for i, (op, path) in enumerate(zip(ops, paths)):
        if paths.count(path) > 1:
            path = f"{path}_{paths[:i].count(path)}"
        found += [(w, _layer_name(path, k, len(op["w_hh"]))) for k, w in enumerate(op["w_hh"])]
    return found


def _name_recurrent_nodes(model: onnx.ModelProto, layer_weights: list) -> None:
    """Name each recurrent node after the layer it computes, so lifted state reads 'lstm.h_in'
    rather than paddle2onnx's 'LSTM.4.h_in'.  A node is matched to a layer by its recurrent
    weight R, which paddle2onnx builds from the layer's weight_hh with the gates reordered
    (computed from constants: evaluated here): the sorted values are the same.  A node that
    matches no layer, or several, keeps its name."""
    graph = model.graph
    known = [(np.sort(np.asarray(w, np.float32).ravel()), name) for w, name in layer_weights]
    if not known:
        return
    taken = {n.name for n in graph.node}
    for node in graph.node:
        if node.op_type not in ("LSTM", "GRU", "RNN") or len(node.input) < 3:
            continue
        r = _constant_value(graph, node.input[2])
        if r is None:
            continue
        r = np.sort(r[0].ravel())
        matches = [name for w, name in known if w.shape == r.shape and np.array_equal(w, r)]
        if len(matches) == 1 and matches[0] not in taken:
            taken.add(matches[0])
            node.name = matches[0]


def _constant_value(graph, name: str) -> np.ndarray | None:
    """The value of `name` if it is computed from constants alone (onnx's reference evaluator on
    the nodes that make it), else None."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator
    initializers = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output if o}
    nodes, todo, seen, needed = [], [name], set(), set()
    while todo:
        v = todo.pop()
        if not v or v in seen:
            continue
        seen.add(v)
        if v in initializers:
            needed.add(v)
        elif v in producers:
            nodes.append(producers[v])
            todo.extend(producers[v].input)
        else:
            return None     # a graph input: not a constant
    wanted = {id(n) for n in nodes}
    order = [n for n in graph.node if id(n) in wanted]
    sub = helper.make_graph(order, "constant", [], [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)],
                            [initializers[v] for v in needed])
    try:
        model = helper.make_model(sub, opset_imports=[helper.make_opsetid("", OPSET)])
        return np.asarray(ReferenceEvaluator(model).run(None, {})[0])
    except Exception:   # an op the reference evaluator lacks: leave the node's name as it is
        return None


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
