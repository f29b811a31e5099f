"""Backends run a loaded Model: `native` (our C kernel) and `onnxruntime` (CPU or CUDA).

Each exposes run(feeds, output_names), run_stateful(...) for streams, describe(),
and from_host/to_host/shape_of for the state values it keeps.  choose() picks one.
"""
from __future__ import annotations

from ..errors import LstmrtError, UnsupportedModelError
from ..model import Model

BACKENDS = ("auto", "native", "onnxruntime")


def choose(model: Model, backend: str = "auto", providers=None, native=None, sess_options=None):
    """(backend, why): onnxruntime on CUDA when a CUDA session loads; else native when it
    supports every node; else onnxruntime on the CPU.  `native` (NativeOptions) set to
    anything but the defaults is a request for the native backend."""
    from .native import NativeBackend, NativeOptions
    from .onnxruntime import OnnxruntimeBackend, cuda_listed

    native = native or NativeOptions()
    if backend == "native" or (backend == "auto" and native != NativeOptions()):
        chosen = NativeBackend(model, native)
        return chosen, chosen.describe() + ("" if backend == "native" else " (native options requested)")
    if backend == "onnxruntime" or providers or sess_options is not None:
        chosen = OnnxruntimeBackend(model, providers, sess_options)
        return chosen, f"{chosen.describe()}: requested"
    notes = []
    if cuda_listed():
        gpu = OnnxruntimeBackend(model)
        if gpu.device == "cuda":
            return gpu, "onnxruntime CUDA: a CUDA session loads"
        notes.append("CUDA is listed but a CUDA session did not load")
    else:
        notes.append("no CUDA")
    try:
        chosen = NativeBackend(model, native)
    except UnsupportedModelError as e:
        lacking = f"native lacks {e.op_type} at node '{e.node}'" if e.op_type else f"native cannot run it: {e}"
        return OnnxruntimeBackend(model, ["CPUExecutionProvider"]), f"onnxruntime CPU: {lacking}"
    if not chosen.compile_note:
        return chosen, f"{chosen.describe()} ({'; '.join(notes)})"
    # native would walk numpy for this model: onnxruntime is quicker, where it loads the model
    try:
        return (OnnxruntimeBackend(model, ["CPUExecutionProvider"]),
                f"onnxruntime CPU: native does not compile it whole ({chosen.compile_note})")
    except LstmrtError as e:
        return chosen, f"{chosen.describe()} (onnxruntime cannot load it: {e})"
