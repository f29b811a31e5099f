"""Finding a model's recurrent state: which graph output feeds which graph input next call.

In this order, each pair recording how it was found:
  metadata        "lstmrt.state_pairs" (JSON {input: output}), as our exporters write it;
  recurrent node  an input that reaches an LSTM/GRU/RNN node's initial_h/initial_c through glue
                  ops, paired with the output that comes from the same node's Y_h/Y_c;
  dataflow        an output computed from an input of the same dtype and a compatible shape,
                  along a path that mixes in the streamed input (an LSTM cell written out in
                  MatMul/Sigmoid/Tanh/Mul, a packed [layers*2, batch, H] state sliced, updated and
                  concatenated), through If/Loop bodies too;
  name            only to break a tie the structure leaves (state -> stateN, h0 -> hn, ...).
What stays ambiguous is a StreamError listing the candidates and the state={...} that settles it.
"""
from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass

from .dataflow import graph_data_sources
from .errors import LstmrtError, ModelError, StreamError
from .model import Model
from .state_shapes import inferred_output_shapes, merged_shape

RECURRENT_OPS = {"LSTM", "GRU", "RNN"}
# ops that move or reshape data without mixing it: state flows through them unchanged in meaning
GLUE_OPS = {"Identity", "Transpose", "Squeeze", "Unsqueeze", "Reshape", "Slice", "Split", "Gather",
            "Concat", "Cast", "Expand", "Flatten"}
STATE_INPUT_SLOTS = {5: "h", 6: "c"}     # initial_h, initial_c
STATE_OUTPUT_SLOTS = {1: "h", 2: "c"}    # Y_h, Y_c
METADATA_KEY = "lstmrt.state_pairs"      # JSON {state input: state output}, written by our exporter


def _node_key(model: Model, node) -> str:
    return node.name or f"#{list(model.graph.node).index(node)}"


def reached_state_slots(model: Model, value: str) -> frozenset:
    """(node, "h"|"c") for every recurrent state input `value` feeds through glue."""
    consumers, found, todo, seen = model.consumers(), set(), [value], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node, slot in consumers.get(name, []):
            if node.op_type in RECURRENT_OPS and slot in STATE_INPUT_SLOTS:
                found.add((_node_key(model, node), STATE_INPUT_SLOTS[slot]))
            elif node.op_type in GLUE_OPS and (slot == 0 or node.op_type == "Concat"):
                todo.extend(o for o in node.output if o)
    return frozenset(found)


def source_state_slots(model: Model, value: str) -> frozenset:
    """(node, "h"|"c") for every recurrent final state that `value` is built from through glue."""
    producers, found, todo, seen = model.producers(), set(), [value], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in producers:
            continue
        seen.add(name)
        node, slot = producers[name]
        if node.op_type in RECURRENT_OPS and slot in STATE_OUTPUT_SLOTS:
            found.add((_node_key(model, node), STATE_OUTPUT_SLOTS[slot]))
        elif node.op_type in GLUE_OPS:
            todo.extend(i for i in (node.input if node.op_type == "Concat" else node.input[:1]) if i)
    return frozenset(found)


@dataclass(frozen=True)
class StatePair:
    """One carried state: `output` of one call is fed to `input` at the next."""
    input: str
    output: str
    found_by: str     # "metadata", "recurrent node", "dataflow", "dataflow + name", or "given"
    detail: str = ""


# -- names: a tie-breaker, never a reason on their own -------------------------------------------
_SUFFIX_SWAPS = (("_in", "_out"), (".in", ".out"), ("in", "out"), ("_input", "_output"), ("0", "n"), ("_0", "_n"))
_PREFIX_SWAPS = (("in_", "out_"), ("past_", "present_"), ("past.", "present."), ("past", "present"),
                 ("input_", "output_"), ("prev_", "next_"), ("old_", "new_"), ("past_key_values.", "present."))


def _stem(name: str) -> str:
    return re.sub(r":\d+$", "", name).lower()   # tf2onnx's "name:0"


def names_match(inp: str, out: str) -> bool:
    """Does `out` read as the next value of `inp` (state -> stateN, h0 -> hn, h_in -> h_out, ...)?"""
    i, o = _stem(inp), _stem(out)
    nexts = {i + "n", i + "_n", i + "_out", i + "out", i + "_new", "new_" + i, "next_" + i, i + "_next"}
    nexts |= {i[:-len(a)] + b for a, b in _SUFFIX_SWAPS if i.endswith(a) and len(i) > len(a)}
    nexts |= {b + i[len(a):] for a, b in _PREFIX_SWAPS if i.startswith(a) and len(i) > len(a)}
    return o in nexts


# -- shapes and dtypes -------------------------------------------------------------------------------
def output_shape(model: Model, name: str) -> list | None:
    """An output's declared shape, its unknown dims filled by shape inference."""
    return merged_shape(model.output(name).shape, inferred_output_shapes(model).get(name))


def _fixed(d) -> bool:
    return isinstance(d, int) and d > 0


def _shape_conflict(inp_shape, out_shape) -> bool:
    """Can the output never be fed back into the input (rank or a fixed dim differs)?"""
    if inp_shape is None or out_shape is None:
        return False
    return len(inp_shape) != len(out_shape) or any(
        _fixed(a) and _fixed(b) and a != b for a, b in zip(inp_shape, out_shape))


def _shapes_alike(inp_shape, out_shape) -> bool:
    """Discovery's stricter test: no conflict, and no dim the input declares variable (named) that
    the output fixes (a [batch, samples] input is no state of a [batch, 1] output).  The reverse is
    allowed: exporters give output dims names of their own where they could not work out a size."""
    if _shape_conflict(inp_shape, out_shape):
        return False
    if inp_shape is None or out_shape is None:
        return True
    return not any(isinstance(a, str) and _fixed(b) for a, b in zip(inp_shape, out_shape))


def _shapes_match_closely(inp_shape, out_shape) -> bool:
    """Every dim provably equal or unknown on a side, at least one fixed size shared, and no two
    different names: the shape of a state, not of a sequence (whose dims are named per chunk)."""
    if inp_shape is None or out_shape is None or len(inp_shape) != len(out_shape):
        return False
    shared = sum(1 for a, b in zip(inp_shape, out_shape) if _fixed(a) and a == b)
    named_apart = any(isinstance(a, str) and isinstance(b, str) and a != b for a, b in zip(inp_shape, out_shape))
    return shared > 0 and not named_apart


def _pair_problems(model: Model, pairs: dict) -> list[str]:
    """What makes `pairs` impossible to carry, one line per problem (empty when fine)."""
    inputs, outputs = {i.name: i for i in model.inputs}, {o.name: o for o in model.outputs}
    problems, seen = [], {}
    for inp, out in pairs.items():
        if inp not in inputs:
            problems.append(f"{inp!r} is not a graph input (inputs: {sorted(inputs)})")
        if out not in outputs:
            problems.append(f"{out!r} is not a graph output (outputs: {sorted(outputs)})")
        if inp not in inputs or out not in outputs:
            continue
        if out in seen:
            problems.append(f"output {out!r} is paired with both {seen[out]!r} and {inp!r}")
        seen[out] = inp
        i, o = inputs[inp], outputs[out]
        if i.elem_type != o.elem_type:
            problems.append(f"{out!r} is {o.type} but {inp!r} is {i.type}")
        shape = o.shape
        if shape is None or any(_fixed(a) and not _fixed(b) for a, b in zip(i.shape or [], shape)):
            shape = output_shape(model, out)      # inference only where the declaration leaves a doubt
        if _shape_conflict(i.shape, shape):
            problems.append(f"{out!r} has shape {shape} but {inp!r} has shape {i.shape}: "
                            "one cannot be fed back into the other")
    return problems


# -- the steps --------------------------------------------------------------------------------------
def _from_metadata(model: Model) -> list[StatePair]:
    raw = model.metadata[METADATA_KEY]
    try:
        pairs = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ModelError(f"metadata '{METADATA_KEY}' is not valid JSON ({e.msg}, at character {e.pos}): "
                         f"{raw[:120]!r}") from None
    if not isinstance(pairs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs.items()):
        raise ModelError(f"metadata '{METADATA_KEY}' must be a JSON object of state input name -> state output "
                         f"name, got {raw[:120]!r}")
    problems = _pair_problems(model, pairs)
    if problems:
        raise ModelError(f"metadata '{METADATA_KEY}' {raw[:200]!r} does not fit the model: " + "; ".join(problems))
    return [StatePair(i, o, "metadata") for i, o in pairs.items()]


def _resolve(edges: set, found_by: str, details: dict) -> tuple[list, set]:
    """Pairs from candidate edges {(input, output)}: an input and output that are each other's only
    candidate pair up; a name match breaks a tie, and may leave the rest unique.  Returns the
    pairs and the edges still ambiguous."""
    remaining, pairs = set(edges), []

    def take(inp, out, how):
        pairs.append(StatePair(inp, out, how, details.get((inp, out), "")))
        remaining.difference_update({e for e in remaining if e[0] == inp or e[1] == out})

    while remaining:
        unique = next((e for e in sorted(remaining)
                       if all(f == e for f in remaining if f[0] == e[0] or f[1] == e[1])), None)
        if unique is not None:
            take(*unique, found_by)
            continue
        named = next((e for e in sorted(remaining) if names_match(*e)
                      and [f for f in remaining if f[0] == e[0] and names_match(*f)] == [e]
                      and [f for f in remaining if f[1] == e[1] and names_match(*f)] == [e]), None)
        if named is None:
            break
        take(*named, f"{found_by} + name")
    return pairs, remaining


def _ambiguous(model: Model, found: list, edges: set, why: str) -> StreamError:
    inputs = sorted({i for i, _ in edges})
    lines = [f"{i!r} could be fed from {' or '.join(repr(o) for o in sorted(o for j, o in edges if j == i))}"
             for i in inputs]
    suggestion = {p.input: p.output for p in found}
    for i, o in sorted(edges):
        if i not in suggestion and o not in suggestion.values():
            suggestion[i] = o
    return StreamError(
        "cannot tell the state pairs apart: " + "; ".join(lines) + f" ({why}). Say which, e.g. "
        f"sess.stream(state={suggestion!r}), or sess.stream(state={{}}) if the model keeps no state")


def _by_recurrent_nodes(model: Model, taken: list) -> list[StatePair]:
    used_in, used_out = {p.input for p in taken}, {p.output for p in taken}
    sources = {o.name: source_state_slots(model, o.name) for o in model.outputs if o.name not in used_out}
    edges, details = set(), {}
    for inp in model.inputs:
        reached = reached_state_slots(model, inp.name) if inp.name not in used_in else frozenset()
        for out, slots in sources.items():
            if reached and slots == reached:
                edges.add((inp.name, out))
                nodes = sorted({n for n, _ in reached})
                kinds = "/".join(sorted({k for _, k in reached}))
                details[(inp.name, out)] = f"{kinds} of {', '.join(map(repr, nodes))}"
    pairs, left = _resolve(edges, "recurrent node", details)
    if left:
        raise _ambiguous(model, taken + pairs, left,
                         "each reaches the same recurrent nodes' state, and the names do not settle it")
    return pairs


def _by_dataflow(model: Model, taken: list) -> list[StatePair]:
    used_in, used_out = {p.input for p in taken}, {p.output for p in taken}
    streamed = set(time_axes(model))       # inputs that feed a recurrent node's X are sequences, not state
    sources = graph_data_sources(model)
    edges = set()
    for inp in model.inputs:
        if inp.name in used_in or inp.name in streamed:
            continue
        for out in model.outputs:
            if out.name in used_out or out.elem_type != inp.elem_type:
                continue
            came_from = sources.get(out.name, frozenset())
            # through the recurrence: the output mixes this input with another one (the new data)
            if inp.name in came_from and len(came_from) > 1 and _shapes_alike(inp.shape, output_shape(model, out.name)):
                edges.add((inp.name, out.name))
    pairs, left = _resolve(edges, "dataflow", {})
    if left:
        raise _ambiguous(model, taken + pairs, left, "each output is computed from each input through the rest of "
                         "the graph, with its dtype and a compatible shape, and the names do not settle it")
    data_inputs = {i.name for i in model.inputs if i.shape is None or len(i.shape) > 0}   # not scalars like sr
    if pairs and {p.input for p in taken + pairs} >= data_inputs:
        # nothing would be left to stream: one of these is the streamed input and its output
        # (y = f(x, state)); keep those a name confirms, else those shaped like a state
        kept = [p for p in pairs if names_match(p.input, p.output)] or [
            p for p in pairs if _shapes_match_closely(model.input(p.input).shape, output_shape(model, p.output))]
        if {p.input for p in taken + kept} >= data_inputs:
            raise _ambiguous(model, taken, {(p.input, p.output) for p in pairs},
                             "each is computed from the other, but pairing them all would leave no input to "
                             "stream, and neither names nor shapes tell the state apart")
        pairs = kept
    return pairs


_DISCOVERED: "weakref.WeakKeyDictionary[Model, object]" = weakref.WeakKeyDictionary()


def discover(model: Model) -> list[StatePair]:
    """The state pairs found in `model` (maybe none); ModelError for lying metadata, StreamError
    when the graph leaves the pairing ambiguous.  Cached per model."""
    if model not in _DISCOVERED:
        try:
            if METADATA_KEY in model.metadata:
                found = _from_metadata(model)
            else:
                found = _by_recurrent_nodes(model, [])
                found += _by_dataflow(model, found)
                order = {i.name: k for k, i in enumerate(model.inputs)}
                found.sort(key=lambda p: order[p.input])
            _DISCOVERED[model] = found
        except LstmrtError as e:
            _DISCOVERED[model] = e
    result = _DISCOVERED[model]
    if isinstance(result, LstmrtError):
        raise result
    return list(result)


def find_state_pairs(model: Model) -> dict:
    """{state input name: state output name} as discovered; {} where discovery fails (the stream
    that needs them raises the reason)."""
    try:
        return {p.input: p.output for p in discover(model)}
    except LstmrtError:
        return {}


def _refuse_backward(model: Model) -> None:
    for node in model.graph.node:
        if node.op_type not in RECURRENT_OPS:
            continue
        direction = next((a.s.decode() for a in node.attribute if a.name == "direction"), "forward")
        if direction != "forward":
            raise StreamError(f"node '{_node_key(model, node)}' ({node.op_type}) runs {direction} over time; "
                              "a stream only sees the past, so only forward recurrences can stream")


def _refuse_restarting_nodes(model: Model, pairs: list) -> None:
    carried = set().union(*[reached_state_slots(model, p.input) for p in pairs]) if pairs else set()
    for node in model.graph.node:
        if node.op_type not in RECURRENT_OPS:
            continue
        kinds = ("h", "c") if node.op_type == "LSTM" else ("h",)
        missing = [k for k in kinds if (_node_key(model, node), k) not in carried]
        if missing:
            raise StreamError(
                f"node '{_node_key(model, node)}' ({node.op_type}): its initial_{'/initial_'.join(missing)} "
                "is not a graph input paired with its final state output, so its state would restart at "
                "every chunk; pass state={input: output} to stream() if the pairing exists "
                "(or lift it with `lstmrt streamify`)")


def nothing_found(model: Model) -> str:
    """What discovery looked for, for a model where it found no state."""
    recurrent = sum(1 for n in model.graph.node if n.op_type in RECURRENT_OPS)
    nested = sum(1 for _ in _recurrent_nodes_everywhere(model.graph, {})) - recurrent
    inside = (f", {nested} inside If/Loop bodies with their state built there: `lstmrt streamify` lifts those "
              "in If branches") if nested else ""
    names = [i.name for i in model.inputs]
    return (f"no recurrent state found: no '{METADATA_KEY}' metadata; no graph input reaches the initial state "
            f"of a recurrent node ({recurrent} LSTM/GRU/RNN node(s) in the main graph{inside}); and no graph output is "
            f"computed from one of the inputs {names} together with other data, with that input's dtype and "
            "shape. Pass the pairs, sess.stream(state={'state_in': 'state_out'}), or sess.stream(state={}) "
            "to stream a model that keeps no state (each call on its own)")


def stream_pairs(model: Model, explicit: dict | None = None) -> list[StatePair]:
    """The state pairs a stream will carry, or StreamError (ModelError for lying metadata) saying why
    the model cannot stream.  `explicit`: the pairing the caller gave; {} for a stateless stream."""
    _refuse_backward(model)
    if explicit is not None:
        if not isinstance(explicit, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in explicit.items()):
            raise StreamError(f"state must be a dict of state input name -> state output name, got {explicit!r}")
        problems = _pair_problems(model, explicit)
        if problems:
            raise StreamError("state pairs given to stream(): " + "; ".join(problems))
        return [StatePair(i, o, "given") for i, o in explicit.items()]
    pairs = discover(model)
    _refuse_restarting_nodes(model, pairs)
    if not pairs:
        raise StreamError(nothing_found(model))
    problems = _pair_problems(model, {p.input: p.output for p in pairs})
    if problems:
        raise StreamError(f"state pairs found by {', '.join(sorted({p.found_by for p in pairs}))}: "
                          + "; ".join(problems))
    return pairs


def _recurrent_nodes_everywhere(graph, producers: dict):
    """(recurrent node, producers it sees) for the graph and its If/Loop bodies (outer names visible)."""
    for node in graph.node:
        if node.op_type in RECURRENT_OPS:
            yield node, producers
        for attr in node.attribute:
            for body in [attr.g] if attr.type == attr.GRAPH else list(attr.graphs) if attr.type == attr.GRAPHS else []:
                inner = dict(producers)
                inner.update({out: (n, i) for n in body.node for i, out in enumerate(n.output) if out})
                yield from _recurrent_nodes_everywhere(body, inner)


def _traced_input_axes(model: Model, axis_of_layout: dict) -> dict:
    """{graph input: axis} for inputs that feed a recurrent node's X (in the main graph or an
    If/Loop body), traced back from the node's axis (by layout) through Transpose and
    shape-preserving ops."""
    axes = {}
    graph_inputs = {i.name for i in model.inputs}
    for node, producers in _recurrent_nodes_everywhere(model.graph, model.producers()):
        layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
        if layout not in axis_of_layout or not node.input:   # a malformed node: nothing to trace
            continue
        name, axis = node.input[0], axis_of_layout[layout]
        while name not in graph_inputs and name in producers:
            prod, _ = producers[name]
            if prod.op_type == "Transpose":
                perm = next((list(a.ints) for a in prod.attribute if a.name == "perm"), None)
                if perm is None or not 0 <= axis < len(perm):   # no perm, or one of the wrong rank
                    break
                axis = perm[axis]
            elif prod.op_type not in ("Identity", "Cast", "Relu", "Tanh", "Sigmoid", "Dropout"):
                break
            name = prod.input[0]
        if name in graph_inputs:
            axes.setdefault(name, axis)
    return axes


def batch_axes(model: Model) -> dict:
    """{graph input: its batch axis} for inputs that feed recurrent nodes."""
    return _traced_input_axes(model, {0: 1, 1: 0})


def time_axes(model: Model) -> dict:
    """{graph input: its time axis} for inputs that feed recurrent nodes."""
    return _traced_input_axes(model, {0: 0, 1: 1})
