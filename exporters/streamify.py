"""Lift the recurrent state of any ONNX model into graph inputs and outputs.

For every LSTM/GRU/RNN node: an initial state that already comes from a graph input is
kept (and paired with the final-state output it matches, adding that output if the model
does not return it); an initial state built inside the graph (ConstantOfShape, Expand,
a constant, or absent = zeros) is replaced by a new graph input `<node>.h_in` /
`<node>.c_in` whose final state leaves as `<node>.h_out` / `<node>.c_out`.  The pairing
is written into metadata ("lstmrt.state_pairs") so `sess.stream()` needs no guessing.
Nodes left without consumers (the old zero-state builders) are removed.

A recurrent node inside a branch of an `If` in the main graph (a model that picks its network by
sample rate, say) is lifted the same way: its new state input is read from the outer scope, its
final state leaves the branch as a new If output, and the other branch passes the state through
unchanged (the state of a branch not taken stays as it was).  A recurrent node inside a Loop body,
or deeper than one If, is not lifted: StreamifyError names it and says why.
"""
from __future__ import annotations

import json
import re

import onnx
from onnx import TensorProto, helper

from .onnx_build import METADATA_KEY

RECURRENT = {"LSTM", "GRU", "RNN"}
GLUE = {"Identity", "Transpose", "Squeeze", "Unsqueeze", "Reshape", "Slice", "Split", "Gather",
        "Concat", "Cast", "Expand", "Flatten"}
IN_SLOTS = {"h": 5, "c": 6}
OUT_SLOTS = {"h": 1, "c": 2}


class StreamifyError(ValueError):
    pass


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", name).strip("_") or "rnn"


def _graph_input_sources(graph, value: str, producers: dict, inputs: set) -> set:
    """Graph inputs that `value` is computed from through glue ops (first data input only)."""
    found, todo, seen = set(), [value], set()
    while todo:
        v = todo.pop()
        if v in seen or not v:
            continue
        seen.add(v)
        if v in inputs:
            found.add(v)
            continue
        if v in producers:
            node = producers[v]
            if node.op_type in GLUE:
                todo.extend(node.input if node.op_type == "Concat" else node.input[:1])
    return found


def _reaches_output(value: str, consumers: dict, outputs: set) -> str | None:
    """The graph output `value` becomes through glue, if any (one step of Concat included)."""
    todo, seen = [value], set()
    while todo:
        v = todo.pop()
        if v in seen:
            continue
        seen.add(v)
        if v in outputs:
            return v
        for node in consumers.get(v, []):
            if node.op_type in GLUE:
                todo.extend(o for o in node.output if o)
    return None


def _batch_dim(graph, node, producers, inputs_by_name):
    """The dim (param name or int) of X's batch axis at the graph input, else 'batch'."""
    layout = _attr(node, "layout", 0)
    axis, v = (1 if layout == 0 else 0), node.input[0]
    while v not in inputs_by_name and v in producers:
        p = producers[v]
        if p.op_type == "Transpose" and _attr(p, "perm") is not None:
            axis = list(_attr(p, "perm"))[axis]
        elif p.op_type not in ("Identity", "Cast", "Relu", "Tanh", "Sigmoid", "Dropout"):
            break
        v = p.input[0]
    if v in inputs_by_name:
        dims = inputs_by_name[v].type.tensor_type.shape.dim
        if axis < len(dims):
            d = dims[axis]
            if d.HasField("dim_value") and d.dim_value > 0:
                return d.dim_value
            if d.dim_param:
                return d.dim_param
    return "batch"


def _names_read(nodes) -> set:
    """Every value name the nodes read, their If/Loop bodies' outer-scope reads included."""
    names = set()
    for n in nodes:
        names.update(n.input)
        for a in n.attribute:
            for body in [a.g] if a.type == a.GRAPH else list(a.graphs) if a.type == a.GRAPHS else []:
                names |= _names_read(body.node) | {o.name for o in body.output}
    return names


def _prune(graph) -> None:
    """Drop nodes none of whose outputs are used, and unused initializers."""
    while True:
        used = {o.name for o in graph.output} | _names_read(graph.node)
        dead = [n for n in graph.node if not any(o in used for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = _names_read(graph.node) | {o.name for o in graph.output}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)


def streamify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """A streamable copy of `model` and its state pairs {state input: state output}."""
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    model = model_copy
    graph = model.graph
    recurrent = [n for n in graph.node if n.op_type in RECURRENT]
    in_branches, not_liftable = _nested_recurrent(graph)
    if not_liftable:
        raise StreamifyError("cannot lift the state of " + "; ".join(not_liftable))
    if not recurrent and not in_branches:
        raise StreamifyError("the model has no LSTM, GRU or RNN node; there is no recurrent state to lift "
                             f"(ops: {sorted({n.op_type for n in graph.node})})")
    for node in recurrent + [r for _, _, r in in_branches]:
        direction = _attr(node, "direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        if direction != "forward":
            raise StreamifyError(f"node '{node.name}' ({node.op_type}) runs {direction} over time; a stream only "
                                 "sees the past, so only models whose recurrences are all forward can stream")
    initializers = {t.name for t in graph.initializer}
    inputs_by_name = {i.name: i for i in graph.input if i.name not in initializers}
    used_names = ({v for n in graph.node for v in list(n.input) + list(n.output)}
                  | set(inputs_by_name) | initializers | {o.name for o in graph.output})

    def fresh(base):
        name, i = base, 1
        while name in used_names:
            name, i = f"{base}_{i}", i + 1
        used_names.add(name)
        return name

    producers = {o: n for n in graph.node for o in n.output if o}
    batches = [_batch_dim(graph, n, producers, inputs_by_name) for n in recurrent + [r for _, _, r in in_branches]]
    common_batch = next((b for b in batches if b != "batch"), "batch")
    pairs: dict = {}
    pending: dict = {}   # graph input -> [(node, kind)] it feeds but whose output is not returned
    for index, node in enumerate(recurrent):
        kinds = ("h", "c") if node.op_type == "LSTM" else ("h",)
        hidden = _attr(node, "hidden_size")
        if hidden is None:
            raise StreamifyError(f"node '{node.name}' ({node.op_type}) has no hidden_size attribute")
        layout = _attr(node, "layout", 0)
        base = _safe(node.name or f"{node.op_type.lower()}{index}")
        for kind in kinds:
            slot, out_slot = IN_SLOTS[kind], OUT_SLOTS[kind]
            current = node.input[slot] if len(node.input) > slot else ""
            producers = {o: n for n in graph.node for o in n.output if o}
            sources = _graph_input_sources(graph, current, producers, set(inputs_by_name)) if current else set()
            # make sure the final state is an output of the node
            while len(node.output) <= out_slot:
                node.output.append("")
            if not node.output[out_slot]:
                node.output[out_slot] = fresh(f"{base}.{kind}_final")
            final = node.output[out_slot]
            if sources:
                if len(sources) != 1:
                    raise StreamifyError(f"node '{node.name}': initial_{kind} mixes graph inputs {sorted(sources)}")
                pending.setdefault(sources.pop(), []).append((node, kind, final))
                continue
            # the state is made inside the graph: replace it by a new input, expose the final state
            while len(node.input) <= slot:
                node.input.append("")
            num_dirs = 1
            batch = _batch_dim(graph, node, producers, inputs_by_name)
            batch = common_batch if batch == "batch" else batch
            shape = [num_dirs, batch, hidden] if layout == 0 else [batch, num_dirs, hidden]
            state_in = fresh(f"{base}.{kind}_in")
            graph.input.append(helper.make_tensor_value_info(state_in, TensorProto.FLOAT, shape))
            node.input[slot] = state_in
            state_out = fresh(f"{base}.{kind}_out")
            graph.node.append(helper.make_node("Identity", [final], [state_out], name=fresh(f"{base}.{kind}_out_id")))
            graph.output.append(helper.make_tensor_value_info(state_out, TensorProto.FLOAT, shape))
            pairs[state_in] = state_out
        _ = layout

    # states that come from graph inputs: pair each input with the output its final states reach
    outputs = {o.name for o in graph.output}
    consumers: dict = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for state_in, users in pending.items():
        reached = {_reaches_output(final, consumers, outputs) for _, _, final in users}
        if len(reached) == 1 and None not in reached:
            pairs[state_in] = reached.pop()
            continue
        if any(r is not None for r in reached):
            raise StreamifyError(f"state input '{state_in}': the final states of the nodes it feeds reach "
                                 f"different outputs {sorted(r for r in reached if r)}; pair them by hand")
        # the model takes this state but does not return it: return it, in the input's layout
        finals = [final for _, _, final in users]
        state_out = fresh(f"{state_in}_out")
        if len(finals) == 1:
            graph.node.append(helper.make_node("Identity", finals, [state_out], name=fresh(f"{state_out}_id")))
        else:   # a stacked model slices one [L, B, H] input per layer; stack the layers' finals back
            graph.node.append(helper.make_node("Concat", finals, [state_out], axis=0, name=fresh(f"{state_out}_cat")))
        info = inputs_by_name[state_in]
        graph.output.append(helper.make_tensor_value_info(state_out, info.type.tensor_type.elem_type,
                                                          [d.dim_param or d.dim_value or None
                                                           for d in info.type.tensor_type.shape.dim]))
        pairs[state_in] = state_out

    for if_node, branch, node in in_branches:
        pairs.update(_lift_from_branch(graph, if_node, branch, node, fresh, common_batch))
    _prune(graph)
    for entry in [p for p in model.metadata_props if p.key == METADATA_KEY]:
        model.metadata_props.remove(entry)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(pairs)
    onnx.checker.check_model(model)
    return model, pairs


def _nested_recurrent(graph) -> tuple[list, list]:
    """([(If node, branch name, recurrent node)] liftable: directly in a branch of a main-graph If,
    its initial state built inside the branch), [what cannot be lifted, and why]."""
    liftable, refused = [], []
    for node in graph.node:
        for attr in node.attribute:
            bodies = [attr.g] if attr.type == attr.GRAPH else list(attr.graphs) if attr.type == attr.GRAPHS else []
            for body in bodies:
                for inner in body.node:
                    where = f"node '{inner.name}' ({inner.op_type}) in {attr.name} of {node.op_type} '{node.name}'"
                    deeper = any(a.type in (a.GRAPH, a.GRAPHS) for a in inner.attribute)
                    if deeper and _holds_recurrent(inner):
                        refused.append(f"the recurrent nodes inside {where}: only one level of If is lifted")
                    if inner.op_type not in RECURRENT:
                        continue
                    if node.op_type != "If":
                        refused.append(f"{where}: its state restarts at every iteration of the loop, and lifting "
                                       "it out would change what the model computes")
                        continue
                    built_inside = {v for n in body.node for v in n.output}
                    states = [inner.input[s] for s in IN_SLOTS.values() if len(inner.input) > s and inner.input[s]]
                    if any(v not in built_inside for v in states):
                        refused.append(f"{where}: its initial state comes from outside the branch; pass the pairing "
                                       "to sess.stream(state=...) instead")
                        continue
                    liftable.append((node, attr.name, inner))
    return liftable, refused


def _holds_recurrent(node) -> bool:
    for attr in node.attribute:
        for body in [attr.g] if attr.type == attr.GRAPH else list(attr.graphs) if attr.type == attr.GRAPHS else []:
            if any(n.op_type in RECURRENT or _holds_recurrent(n) for n in body.node):
                return True
    return False


def _lift_from_branch(graph, if_node, branch: str, node, fresh, batch) -> dict:
    """New state inputs/outputs for a recurrent node in one branch of a main-graph If."""
    bodies = {a.name: a.g for a in if_node.attribute}
    taken, other = bodies[branch], bodies["else_branch" if branch == "then_branch" else "then_branch"]
    hidden, layout = _attr(node, "hidden_size"), _attr(node, "layout", 0)
    shape = [1, batch, hidden] if layout == 0 else [batch, 1, hidden]
    base, pairs = _safe(node.name or f"{node.op_type.lower()}_in_{if_node.name}"), {}
    for kind in ("h", "c") if node.op_type == "LSTM" else ("h",):
        slot, out_slot = IN_SLOTS[kind], OUT_SLOTS[kind]
        while len(node.input) <= slot:
            node.input.append("")
        while len(node.output) <= out_slot:
            node.output.append("")
        if not node.output[out_slot]:
            node.output[out_slot] = fresh(f"{base}.{kind}_final")
        state_in, state_out = fresh(f"{base}.{kind}_in"), fresh(f"{base}.{kind}_out")
        graph.input.append(helper.make_tensor_value_info(state_in, TensorProto.FLOAT, shape))
        node.input[slot] = state_in                        # read from the outer scope
        taken.output.append(helper.make_tensor_value_info(node.output[out_slot], TensorProto.FLOAT, shape))
        kept = fresh(f"{state_in}_kept")                   # the branch not taken leaves the state as it was
        other.node.append(helper.make_node("Identity", [state_in], [kept], name=fresh(f"{kept}_id")))
        other.output.append(helper.make_tensor_value_info(kept, TensorProto.FLOAT, shape))
        if_out = fresh(f"{base}.{kind}_if_out")
        if_node.output.append(if_out)
        graph.node.append(helper.make_node("Identity", [if_out], [state_out], name=fresh(f"{state_out}_id")))
        graph.output.append(helper.make_tensor_value_info(state_out, TensorProto.FLOAT, shape))
        pairs[state_in] = state_out
    return pairs


def name_returned_states(onnx_model, input_names, out_names) -> dict:
    """Rename (in place) each of `out_names` that returns the final value of a state input among
    `input_names` (`h0`) to `h0_out`, the name streamify gives a state output it adds, so the pair
    reads as one whatever the exporter called the outputs.  Returns {old name: new name}."""
    try:
        _, pairs = streamify(onnx_model)    # only to learn the pairing; the export lifts again later
    except StreamifyError:
        return {}
    graph = onnx_model.graph
    taken = ({v.name for v in list(graph.input) + list(graph.output)} | {t.name for t in graph.initializer}
             | {v for n in graph.node for v in list(n.input) + list(n.output)})
    renames = {}
    for state_in, state_out in pairs.items():
        if state_in in input_names and state_out in out_names and state_out not in renames:
            new = f"{state_in}_out"
            if new not in taken:
                renames[state_out] = new
                taken.add(new)
    _rename_values(graph, renames)
    return renames


def _rename_values(graph, renames: dict) -> None:
    """Rename values everywhere they appear in `graph`, its If/Loop bodies included."""
    if not renames:
        return
    for value in list(graph.output) + list(graph.value_info):
        value.name = renames.get(value.name, value.name)
    for node in graph.node:
        for i, v in enumerate(node.input):
            node.input[i] = renames.get(v, v)
        for i, v in enumerate(node.output):
            node.output[i] = renames.get(v, v)
        for attr in node.attribute:
            for body in [attr.g] if attr.type == attr.GRAPH else list(attr.graphs):
                _rename_values(body, renames)


def strip_state(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` without the state pairing metadata (for --no-state on lifted models)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for entry in [p for p in out.metadata_props if p.key == METADATA_KEY]:
        out.metadata_props.remove(entry)
    return out


def lift_state_or_note(model, wanted: bool) -> tuple:
    """(model, pairs, notes): streamify() when state is wanted; a model that cannot stream
    (e.g. bidirectional) comes back unchanged, with a note saying why."""
    if not wanted:
        return model, {}, []
    try:
        lifted, pairs = streamify(model)
        return lifted, pairs, []
    except StreamifyError as e:
        return model, {}, [f"not streamable: {e}; exported without state"]
