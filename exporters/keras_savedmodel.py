"""TensorFlow SavedModel folder (e.g. Keras 3 `model.export(path)`) -> ONNX, through tf2onnx.

Keras 3 cannot reload layers from a SavedModel, so the layer-by-layer emitter in keras.py
cannot run; the serving signature is converted by tf2onnx instead.  tf2onnx rewrites plain
Keras LSTMs into native ONNX LSTM nodes, but leaves GRUs, SimpleRNNs and masked LSTMs as
an ONNX Loop (the TF while loop); such a result is refused, naming the Keras layer.  The
native result then goes through streamify (state lifted unless state=False; a stateful
layer's state, which tf2onnx freezes as a constant, is lifted too) and is verified against
the SavedModel itself, called through the same signature with tf.saved_model.load.

Input and output names are the signature's.  TensorFlow and tf2onnx are imported only
inside functions.
"""
from __future__ import annotations

import os
import re

import numpy as np
import onnx
from onnx import helper

OPSET = 17
SIGNATURE = "serving_default"
RECURRENT = {"LSTM", "GRU", "RNN"}
CELL_KIND = {"lstm_cell": "LSTM", "gru_cell": "GRU", "simple_rnn_cell": "SimpleRNN"}


def _error(message):
    from . import ExportError
    return ExportError(message)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _import_tf2onnx():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf  # noqa: F401
    except ImportError as e:
        raise _error(f"exporting a SavedModel needs TensorFlow ({e}); pip install tensorflow tf2onnx") from None
    try:
        import tf2onnx  # noqa: F401
        from tf2onnx import convert, tf_loader
    except ImportError as e:
        raise _error("exporting a TensorFlow SavedModel folder converts it with tf2onnx, which is not installed "
                     f"({e}); pip install tf2onnx (or save the Keras model as .keras and export that)") from None
    import logging
    for name in ("tf2onnx", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return tf, convert, tf_loader


def _layers(concrete_func) -> dict:
    """{Keras layer name: layer kind or None} read from the variables the signature uses
    ("lstm_a/lstm_cell/kernel:0" -> lstm_a: LSTM)."""
    layers: dict = {}
    for v in concrete_func.variables:
        parts = v.name.split(":")[0].split("/")
        if len(parts) < 2:
            continue
        kind = CELL_KIND.get(parts[1])
        if kind or parts[0] not in layers:
            layers[parts[0]] = kind or layers.get(parts[0])
    return layers


def _layer_of(tf_name: str, layers: dict) -> str | None:
    """The Keras layer a TF op/tensor name belongs to: the innermost scope that is a layer's
    name, possibly with the "_<n>" suffix TF adds to re-entered name scopes."""
    for part in reversed(tf_name.split(":")[0].split("/")):
        matches = [n for n in layers if part == n or re.fullmatch(re.escape(n) + r"(_\d+)+", part)]
        if matches:
            return max(matches, key=len)
    return None


def _describe(layer: str | None, layers: dict, fallback: str) -> str:
    if layer is None:
        return f"the recurrence at '{fallback}'"
    kind = layers.get(layer)
    return f"layer '{layer}'" + (f" ({kind})" if kind else "")


def _refuse_loops(model: onnx.ModelProto, layers: dict, path: str) -> None:
    loops = [n for n in model.graph.node if n.op_type in ("Loop", "Scan")]
    if not loops:
        return
    named = []
    for node in loops:
        layer = _layer_of(node.name, layers) or next((_layer_of(i, layers) for i in node.input if _layer_of(i, layers)),
                                                     None)
        named.append(f"{_describe(layer, layers, node.name)} became an ONNX {node.op_type} (node '{node.name}')")
    raise _error(f"SavedModel '{path}': " + "; ".join(named) + ". tf2onnx rewrites only plain (unmasked) Keras "
                 "LSTMs into native ONNX LSTM nodes; a GRU, SimpleRNN, masked or otherwise non-standard recurrence "
                 "stays a TF while loop, which lstmrt does not run natively or stream. Save the Keras model as "
                 ".keras (model.save('m.keras')) and export that: the .keras route emits native LSTM/GRU/RNN nodes "
                 "for every Keras recurrent layer, masks included")


def _name_recurrent_nodes(model: onnx.ModelProto, layers: dict) -> None:
    """tf2onnx names its LSTM nodes LSTM__<n>; name them after their Keras layer so state
    inputs read `<layer>.h_in`."""
    taken = {n.name for n in model.graph.node}
    for node in model.graph.node:
        if node.op_type not in RECURRENT:
            continue
        layer = _layer_of(node.input[0], layers) if node.input else None
        if layer and layer not in taken:
            taken.discard(node.name)
            node.name = layer
            taken.add(layer)


def _rename_dims(model: onnx.ModelProto) -> None:
    """tf2onnx calls every unknown dim unk__<n>; call the inputs' batch and time axes
    'batch' and 'time' (everywhere those dim params appear)."""
    from lstmrt.model import Model
    from lstmrt.state_pairs import batch_axes, time_axes
    m = Model(model)
    t_axes, b_axes = time_axes(m), batch_axes(m)
    rename = {}
    for info in m.inputs:
        shape = list(info.shape or [])
        for axes, label in ((b_axes, "batch"), (t_axes, "time")):
            axis = axes.get(info.name)
            if axis is not None and axis < len(shape) and isinstance(shape[axis], str):
                rename.setdefault(shape[axis], label)
    if len(set(rename.values())) != len(rename):   # two inputs with differently named batch dims: leave them
        return
    used = {d.dim_param for v in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)
            for d in v.type.tensor_type.shape.dim if d.dim_param}
    if any(label in used for label in rename.values()):
        return
    for v in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param in rename:
                d.dim_param = rename[d.dim_param]


def _convert(path: str):
    """(onnx model, signature name, its concrete function, the loaded SavedModel), as the tf2onnx CLI
    converts a SavedModel (tf2onnx 1.17 has no public from_saved_model)."""
    tf, convert, tf_loader = _import_tf2onnx()
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise _error(f"'{path}' is a folder but not a TensorFlow SavedModel (no saved_model.pb)")
    try:
        signatures = list(tf.saved_model.load(path).signatures)
    except Exception as e:   # TF raises OSError, DecodeError, NotFoundError, ValueError ... for broken folders
        raise _error(f"cannot load TensorFlow SavedModel '{path}': {_first_line(e)}") from None
    usable = [s for s in signatures if not s.startswith("_")]
    if SIGNATURE in usable:
        signature = SIGNATURE
    elif len(usable) == 1:
        signature = usable[0]
    else:
        raise _error(f"SavedModel '{path}' has " + (f"signatures {usable} and none is '{SIGNATURE}'" if usable else
                     "no serving signature") + "; export it with a serving signature (Keras 3: model.export(path))")
    try:
        graph_def, inputs, outputs, func, imported, tables, renames = tf_loader.from_saved_model(
            path, None, None, ["serve"], [signature], None, False, return_concrete_func=True,
            return_initialized_tables=True, return_tensors_to_rename=True)
        with tf.device("/cpu:0"):
            model, _ = convert._convert_common(graph_def, name=path, opset=OPSET, input_names=inputs,
                                               output_names=outputs, tensors_to_rename=renames,
                                               initialized_tables=tables)
    except Exception as e:   # tf2onnx raises ValueError/AssertionError/... for ops it cannot convert
        raise _error(f"tf2onnx could not convert SavedModel '{path}' (signature '{signature}'): "
                     f"{_first_line(e)}") from None
    return model, signature, func, imported


def export(path: str, state: bool = True):
    from . import Exported, _specs_from_graph
    from .onnx_build import METADATA_KEY
    from .streamify import StreamifyError, streamify
    path = os.fspath(path)
    if not os.path.exists(path):
        raise _error(f"'{path}' does not exist")
    model, signature, func, imported = _convert(path)
    layers = _layers(func)
    _refuse_loops(model, layers, path)
    recurrent = [n for n in model.graph.node if n.op_type in RECURRENT]
    if not recurrent:
        raise _error(f"SavedModel '{path}' has no recurrent layer tf2onnx turned into an ONNX LSTM/GRU/RNN node "
                     f"(ops: {sorted({n.op_type for n in model.graph.node})}); lstmrt runs recurrent models")
    _name_recurrent_nodes(model, layers)
    _rename_dims(model)
    for entry in [p for p in model.metadata_props if p.key == METADATA_KEY]:
        model.metadata_props.remove(entry)
    notes = [f"converted by tf2onnx (opset {OPSET}) from signature '{signature}'; reference: the SavedModel "
             "called through that signature"]
    directions = {helper.get_attribute_value(a).decode() for n in recurrent for a in n.attribute
                  if a.name == "direction"} - {"forward"}
    lift = state
    if state and directions:
        lift = False
        notes.append("not streamable: a recurrence runs backwards over time (bidirectional); exported without state")
    original_inputs = {i.name for i in model.graph.input}
    pairs: dict = {}
    if lift:
        try:
            model, pairs = streamify(model)
        except StreamifyError as e:
            raise _error(f"SavedModel '{path}': {e}") from None
    _check_native_ops(model, path)
    specs, out_axes = _specs_from_graph(model, pairs, original_inputs)

    # the reference: the SavedModel's own signature; a stateful layer's state variables (which
    # the call updates) are set before every call: to zeros when lifted (the state inputs are
    # zeros), to the saved values otherwise (tf2onnx froze those as constants)
    import tensorflow as tf
    fn = imported.signatures[signature]
    variables = list(fn.variables)
    saved = [v.numpy() for v in variables]
    arg_specs = fn.structured_input_signature[1]
    shapes = None
    fixed = {int(s.shape[0]) for s in fn.structured_outputs.values() if s.shape.rank and s.shape[0] is not None}
    if len(fixed) == 1:
        batch = fixed.pop()
        shapes = [(batch, 7), (batch, 1), (batch, 12)]
        notes.append(f"the SavedModel fixes batch={batch}; verified at that batch")

    def restore(zero_state: bool):
        for v, value in zip(variables, saved):
            v.assign(np.zeros_like(value) if zero_state and any(v is m for m in mutable) else value)

    def call(feeds):
        args = {k: tf.constant(np.asarray(feeds[k]), dtype=s.dtype) for k, s in arg_specs.items()}
        return {k: np.asarray(v) for k, v in fn(**args).items()}

    # which variables does a call write? (a stateful layer's state)
    from .verify import make_feeds
    mutable: list = []
    try:
        call(make_feeds(specs, *(shapes or [(2, 3)])[0], np.random.default_rng(0)))
    except Exception as e:   # TF raises InvalidArgumentError & co. for feeds the signature rejects
        raise _error(f"SavedModel '{path}': calling signature '{signature}' failed: {_first_line(e)}") from None
    mutable.extend(v for v, value in zip(variables, saved) if not np.array_equal(v.numpy(), value))
    restore(False)
    if mutable:
        notes.append(f"stateful: the call updates {sorted({v.name.split(':')[0] for v in mutable})}; " +
                     ("tf2onnx froze their saved values as the initial state, replaced by the state inputs "
                      "(zeros = reset_states())" if pairs else "their saved values are the fixed initial state"))

    def reference(feeds):
        restore(zero_state=bool(pairs))
        out = call(feeds)
        restore(False)   # leave the loaded model as found
        return out

    return Exported(model, specs, pairs, out_axes, reference, "tensorflow", path, notes, shapes)


def _check_native_ops(model: onnx.ModelProto, path: str) -> None:
    """tf2onnx's glue (e.g. Dense on a sequence becomes Tensordot with ReduceProd) must be ops
    lstmrt's native backend runs; refuse with the op named rather than fail in verification."""
    import lstmrt
    from lstmrt.errors import UnsupportedModelError
    try:
        lstmrt.InferenceSession(model, backend="native")
    except UnsupportedModelError as e:
        raise _error(f"SavedModel '{path}': tf2onnx's conversion is not runnable by lstmrt's native backend: "
                     f"{str(e).split(' (supported:')[0]}; save the Keras model as .keras (model.save('m.keras')) "
                     "and export that") from None
