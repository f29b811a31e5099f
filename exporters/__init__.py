"""Export Keras, PyTorch and Paddle recurrent models to ONNX that lstmrt runs and streams.

    from lstmrt.exporters import export
    report = export(model, "model.onnx", example_input=x)   # framework detected from the object
    print(report)

Recurrent layers become native ONNX LSTM/GRU/RNN nodes (layout 0, dynamic batch and time);
by default every recurrent layer's state is a graph input/output pair recorded in the
model's metadata ("lstmrt.state_pairs"), so `lstmrt.InferenceSession(...).stream()` carries
it.  Every export is checked against the framework on onnxruntime and on lstmrt's native
backend (two or more shapes, T=1 included, and streamed in uneven chunks).

Importing this package imports no framework; each framework is imported by the function
that needs it.
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass, field

import onnx

from .verify import TOL, Verification, VerificationError

__all__ = ["export", "streamify_file", "Report", "ExportError", "VerificationError", "detect_framework"]

FRAMEWORKS = ("keras", "torch", "paddle")


class ExportError(ValueError):
    """A model that cannot be exported (unsupported layer, unreadable file, ...), with the reason."""


@dataclass
class Exported:
    """What a framework module hands back: the ONNX model and how to check it."""
    model: onnx.ModelProto
    specs: list                       # verify.InputSpec per graph input
    pairs: dict                       # {state input: state output}
    out_time_axes: dict               # {output: its time axis, or None}
    reference: object                 # callable feeds -> {output name: array} running the framework
    framework: str
    source: str
    notes: list = field(default_factory=list)
    shapes: list | None = None        # (batch, time) shapes to verify at, if not the default


@dataclass
class Report:
    path: str | None
    framework: str
    source: str
    inputs: list
    outputs: list
    state_pairs: dict
    op_counts: dict
    verification: Verification | None
    notes: list = field(default_factory=list)

    @property
    def max_err(self) -> float | None:
        return self.verification.max_err if self.verification else None

    def __str__(self) -> str:
        lines = [f"{self.framework} {self.source} -> {self.path or '<in memory>'}"]
        lines.append("  inputs:  " + ", ".join(f"{n}{shape} {t}" for n, shape, t in self.inputs))
        lines.append("  outputs: " + ", ".join(f"{n}{shape} {t}" for n, shape, t in self.outputs))
        if self.state_pairs:
            lines.append("  state pairs (stream() carries them): "
                         + ", ".join(f"{i} -> {o}" for i, o in self.state_pairs.items()))
        else:
            lines.append("  no state pairs (plain model)")
        lines.append("  ops: " + ", ".join(f"{op} x{n}" for op, n in sorted(self.op_counts.items())))
        if self.verification is None:
            lines.append("  not verified (--no-verify)")
        else:
            by_shape: dict = {}
            for c in self.verification.checks:
                key = (c.shape, c.backend)
                by_shape[key] = max(by_shape.get(key, 0.0), c.max_err)
            lines.append(f"  max abs error vs framework (tolerance {TOL:g}):")
            for (shape, backend), err in by_shape.items():
                lines.append(f"    {shape:<48} {backend:<12} {err:.2e}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _interface(values) -> list:
    out = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]
        out.append((v.name, dims, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name))
    return out


def detect_framework(model) -> str:
    """'keras', 'torch' or 'paddle' for a model object or a saved file/folder."""
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.exists(path):
            raise ExportError(f"'{path}' does not exist")
        if os.path.isdir(path):
            if os.path.exists(os.path.join(path, "saved_model.pb")):
                return "keras"
            raise ExportError(f"'{path}' is a folder but not a TensorFlow SavedModel (no saved_model.pb)")
        ext = os.path.splitext(path)[1].lower()
        if ext in (".keras", ".h5", ".hdf5"):
            return "keras"
        if ext in (".pt", ".pth", ".ts", ".torchscript"):
            return "torch"
        if ext in (".json", ".pdmodel"):
            return "paddle"
        raise ExportError(f"cannot tell the framework of '{path}' from its extension: expected .keras/.h5 or a "
                          "SavedModel folder (Keras), .pt (TorchScript), .json/.pdmodel (paddle.jit.save)")
    for name, module, base in (("torch", "torch", "nn.Module"), ("keras", "keras", "Layer"),
                               ("paddle", "paddle", "nn.Layer")):
        mod = sys.modules.get(module)
        if mod is None:
            continue
        cls = mod
        for part in base.split("."):
            cls = getattr(cls, part, None)
        if cls is not None and isinstance(model, cls):
            return name
    raise ExportError(f"cannot tell the framework of a {type(model).__module__}.{type(model).__name__}: "
                      "expected a torch.nn.Module, keras.Model or paddle.nn.Layer (or a path to a saved one)")


def _framework_module(framework: str):
    if framework == "keras":
        from . import keras as module
    elif framework == "torch":
        from . import pytorch as module
    elif framework == "paddle":
        from . import paddle as module
    else:
        raise ExportError(f"unknown framework {framework!r}; expected one of {FRAMEWORKS}")
    return module


def check_native(model: onnx.ModelProto) -> None:
    """Recurrences must be native LSTM/GRU/RNN nodes with layout 0: no Loop/Scan, no layout=1."""
    for node in model.graph.node:
        if node.op_type in ("Loop", "Scan"):
            raise ExportError(f"node '{node.name}' is an ONNX {node.op_type}: the recurrence did not become a native "
                              "LSTM/GRU/RNN node")
        if node.op_type in ("LSTM", "GRU", "RNN"):
            layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
            if layout != 0:
                raise ExportError(f"node '{node.name}' ({node.op_type}) has layout={layout}; onnxruntime runs only 0")


def finish(exported: Exported, path: str | None, verify: bool = True) -> Report:
    """Check the recurrences are native, verify (unless told not to), save, and report."""
    check_native(exported.model)
    verification = None
    if verify:
        from .verify import verify as run_checks
        verification = run_checks(exported.model, exported.specs, exported.reference, exported.pairs,
                                  exported.out_time_axes, shapes=exported.shapes)
    report = Report(path, exported.framework, exported.source, _interface(
        [i for i in exported.model.graph.input if i.name not in {t.name for t in exported.model.graph.initializer}]),
        _interface(exported.model.graph.output), dict(exported.pairs),
        dict(Counter(n.op_type for n in exported.model.graph.node)), verification, list(exported.notes))
    if verification is not None and verification.failures:
        worst = max(verification.failures, key=lambda c: c.max_err)
        raise VerificationError(
            f"the export differs from the {exported.framework} model by {worst.max_err:.3g} (> {TOL:g}) on output "
            f"'{worst.output}' at {worst.shape} on {worst.backend} (vs {worst.against}); "
            f"{len(verification.failures)} check(s) failed; not saved\n{report}", report)
    if path is not None:
        onnx.save(exported.model, path)
    return report


def export(model, path: str | None = None, example_input=None, *, state: bool = True, verify: bool = True,
           framework: str | None = None) -> Report:
    """Export `model` (a torch.nn.Module, keras.Model, paddle.nn.Layer, or a path to a saved one) to
    ONNX at `path`, verified against the framework; returns the Report (`.model` holds the proto).

    example_input: an array (or tuple/dict of arrays) the model takes; needed by torch and paddle
    models whose input shapes cannot be read from the model.
    state: make every recurrent layer's state a graph input/output pair (when all are unidirectional).
    """
    framework = framework or detect_framework(model)
    module = _framework_module(framework)
    exported = module.export(model, example_input=example_input, state=state)
    try:
        report = finish(exported, path, verify=verify)
    except VerificationError as e:
        failures = e.report.verification.failures if e.report is not None else []
        if not failures or not all(c.streamed for c in failures):
            raise
        # the whole call matches and only streaming does not: a plain model is still right
        exported = _plain_after_stream_mismatch(module, model, example_input, failures)
        report = finish(exported, path, verify=verify)
    report.model = exported.model
    return report


def _plain_after_stream_mismatch(module, model, example_input, failures) -> Exported:
    from .time_layers import mark_not_streamable
    worst = max(failures, key=lambda c: c.max_err)
    reason = (f"streamed in chunks, output '{worst.output}' differs from the whole call by {worst.max_err:.3g} "
              f"(> {TOL:g}) on {worst.backend}: some layer mixes steps across chunk boundaries in a way lstmrt does "
              "not carry (e.g. pooling or attention over the whole sequence)")
    plain = module.export(model, example_input=example_input, state=False)
    mark_not_streamable(plain.model, reason)
    plain.notes.append(f"not streamable: {reason}; exported as a plain model (whole-sequence checks pass)")
    return plain


def streamify_file(source: str, path: str | None, verify: bool = True) -> Report:
    """Lift the recurrent state of an ONNX model made elsewhere into inputs/outputs (see streamify)."""
    from .streamify import StreamifyError, streamify
    try:
        original = onnx.load(source)
    except Exception as e:   # onnx raises DecodeError, ValueError, OSError ... for bad files
        raise ExportError(f"'{source}' is not a readable ONNX model: {e}") from None
    from . import time_layers

    def lift(m):
        try:
            lifted, found = streamify(m)
        except StreamifyError as e:
            raise ExportError(str(e)) from None
        return lifted, found, []
    # convolutions along time: causal context lifted too; a layer that looks ahead cannot stream
    model, pairs, notes = time_layers.prepare(original, True, time_layers.trace_sequence_axes(original), lift)
    if not pairs:
        reasons = [n.removeprefix("not streamable: ").removesuffix("; exported without state") for n in notes]
        raise ExportError("cannot stream: " + "; ".join(reasons) if reasons else
                          "the model has no recurrent state to lift")
    specs, out_axes = _specs_from_graph(model, pairs, {i.name for i in original.graph.input})

    def reference(feeds):   # the original model, on onnxruntime, from the same (zero) state
        from .verify import _ort_runner
        names = {i.name for i in original.graph.input}
        return _ort_runner(original)({k: v for k, v in feeds.items() if k in names})
    exported = Exported(model, specs, pairs, out_axes, reference, "onnx", source,
                        notes=["reference: the original model on onnxruntime"] + notes)
    return finish(exported, path, verify=verify)


def _specs_from_graph(model: onnx.ModelProto, pairs: dict, own: set = frozenset()):
    """Input specs read from a model's declared shapes: the time axis is where the recurrent
    node's X traces back to; the batch axis likewise."""
    from lstmrt.model import Model
    from lstmrt.state_pairs import batch_axes, time_axes

    from .verify import InputSpec
    from .time_layers import trace_sequence_axes
    m = Model(model)
    t_axes, b_axes = time_axes(m), batch_axes(m)
    for name, (b, t) in trace_sequence_axes(model).items():   # through conv front-ends too
        b_axes.setdefault(name, b)
        t_axes.setdefault(name, t)
    specs = []
    batch_names = set()
    for info in m.inputs:
        if info.name in pairs:
            continue
        dims = list(info.shape or [])
        t, b = t_axes.get(info.name), b_axes.get(info.name)
        if t is not None:
            dims[t] = "T"
        if b is not None:
            if isinstance(dims[b], str):
                batch_names.add(dims[b])
            dims[b] = "B"
        dims = [d if isinstance(d, int) and d > 0 or d in ("B", "T") else 1 for d in dims]
        specs.append(InputSpec(info.name, dims, dtype=info.dtype.name))
    for info in m.inputs:
        if info.name in pairs:
            dims = ["B" if (d in batch_names or not (isinstance(d, int) and d > 0)) else d for d in info.shape]
            specs.append(InputSpec(info.name, dims, state="own" if info.name in own else "added"))
    out_axes = {}
    time_names = {m.input(s.name).shape[s.time_axis] for s in specs if s.time_axis is not None}
    for o in m.outputs:
        shape = o.shape or []
        out_axes[o.name] = next((i for i, d in enumerate(shape) if d in time_names and isinstance(d, str)), None)
    return specs, out_axes
