"""What `lstmrt inspect` prints: a model's interface, recurrent layers, state and backend."""
from __future__ import annotations

from onnx import helper
from rich.console import Console
from rich.text import Text
from rich.table import Table

from .backends import choose
from .backends.native import NativeBackend, count_nodes
from .errors import LstmrtError
from .kernel import available_simd_paths
from .model import Model
from .state_pairs import RECURRENT_OPS, output_shape, stream_pairs


def _io_table(title: str, infos) -> Table:
    table = Table(title=title)
    for col in ("name", "type", "shape"):
        table.add_column(col)
    for i in infos:
        table.add_row(i.name, i.type, "?" if i.shape is None else str(i.shape))
    return table


def _recurrent_table(model: Model) -> Table:
    table = Table(title="recurrent layers")
    for col in ("node", "op", "direction", "input", "hidden", "layout", "details"):
        table.add_column(col)
    for node in model.graph.node:
        if node.op_type not in RECURRENT_OPS:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        W = model.initializers.get(node.input[1]) if len(node.input) > 1 else None
        R = model.initializers.get(node.input[2]) if len(node.input) > 2 else None
        details = [k for k, slot in (("sequence_lens", 4), ("initial_h", 5), ("initial_c", 6), ("peepholes", 7))
                   if len(node.input) > slot and node.input[slot]]
        details += [f"{k}={v.decode() if isinstance(v, bytes) else v}" for k, v in attrs.items()
                    if k in ("clip", "linear_before_reset", "input_forget")]
        if "activations" in attrs:
            details.append("activations=" + ",".join(a.decode() for a in attrs["activations"]))
        table.add_row(node.name, node.op_type, attrs.get("direction", b"forward").decode(),
                      "?" if W is None else str(W.shape[2]), "?" if R is None else str(R.shape[2]),
                      str(attrs.get("layout", 0)), " ".join(details))
    return table


def _compact(shape) -> str:
    return "?" if shape is None else "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def _print_state_pairs(model: Model, console: Console) -> None:
    """The pairs sess.stream() would carry, how each was found and its shapes; or why there are none.
    One line each, never cut: names and shapes are what a user copies into state={...}."""
    try:
        pairs = stream_pairs(model)
    except LstmrtError as e:
        console.print(Text(f"streaming: not possible without state={{...}}: {type(e).__name__}: {e}"))
        return
    console.print(Text("state pairs (state output -> state input at the next call):"))
    for p in pairs:
        how = p.found_by + (f", {p.detail}" if p.detail else "")
        console.print(Text(f"  {p.output} {_compact(output_shape(model, p.output))} -> {p.input} "
                           f"{_compact(model.input(p.input).shape)}  found by {how}"), soft_wrap=True)
    console.print(Text("streaming: state carried " + ", ".join(f"{p.input} -> {p.output}" for p in pairs)))


def inspect_model(path: str, console: Console) -> None:
    model = Model(path)
    producer = f"{model.proto.producer_name} {model.proto.producer_version}".strip() or "unknown"
    console.print(f"[bold]{path}[/bold]  opset {model.opset}, {count_nodes(model.graph)} nodes "
                  f"({len(model.graph.node)} at the top level), made by {producer}")
    console.print(_io_table("inputs", model.inputs))
    if model.overridable:
        console.print(_io_table("initializers a feed may replace", model.overridable))
    console.print(_io_table("outputs", model.outputs))
    console.print(_recurrent_table(model))
    _print_state_pairs(model, console)
    chosen, why = choose(model)
    if chosen.name == "native":       # auto already built it: no second packing of the weights
        native = chosen.describe()
    else:
        try:
            native = NativeBackend(model).describe()
        except LstmrtError as e:
            native = f"native cannot run it: {e}"
    console.print(f"{native} (SIMD paths here: {', '.join(available_simd_paths())})")
    console.print(f"backend auto: {why}")
