"""Backends run a loaded Model: `native` (our C kernel) and `onnxruntime` (CPU or CUDA).

Each exposes run(feeds, output_names), run_stateful(...) for streams, describe(),
and from_host/to_host/shape_of for the state values it keeps.  choose() picks one.
"""
from __future__ import annotations

from ..errors import InputError, LstmrtError, ModelError, UnsupportedModelError
from ..model import Model

BACKENDS = ("auto", "native", "onnxruntime")


def choose(model: Model, backend: str = "auto", providers=None, native=None, sess_options=None):
    """(backend, why): onnxruntime on CUDA when a CUDA session loads; else native when the
    whole model compiles into C; else onnxruntime on the CPU (native where only it loads).  `native` (NativeOptions) set to
    anything but the defaults is a request for the native backend."""
    from .native import NativeOptions
    from .onnxruntime import OnnxruntimeBackend, cuda_listed

    native = native or NativeOptions()
    if backend == "native" or (backend == "auto" and native != NativeOptions()):
        chosen = _native(model, native)
        return chosen, chosen.describe() + ("" if backend == "native" else " (native options requested)")
    if backend == "onnxruntime" or providers or sess_options is not None:
        chosen = OnnxruntimeBackend(model, providers, sess_options)
        return chosen, f"{chosen.describe()}: requested"
    notes = []
    if cuda_listed():
        try:
            gpu = OnnxruntimeBackend(model)
        except ModelError as refused:   # e.g. an IR version this onnxruntime does not read: native may
            gpu = None
            notes.append(f"onnxruntime cannot load it: {str(refused).splitlines()[0][:200]}")
        if gpu is not None and gpu.device == "cuda":
            return gpu, "onnxruntime CUDA: a CUDA session loads"
        if gpu is not None:
            notes.append("CUDA is listed but a CUDA session did not load")
    else:
        notes.append("no CUDA")
    try:
        chosen = _native(model, native)
    except UnsupportedModelError as e:
        from ..ops import supported_ops
        if e.op_type and e.op_type not in supported_ops():
            lacking = f"native lacks {e.op_type} at node '{e.node}'"
        else:   # an op it has, with an attribute or type it does not take: say which
            lacking = f"native cannot run it: {e}"
        return OnnxruntimeBackend(model, ["CPUExecutionProvider"]), f"onnxruntime CPU: {lacking}"
    if not chosen.compile_note:
        return chosen, f"{chosen.describe()} ({'; '.join(notes)})"
    # native would walk numpy for this model: onnxruntime is quicker, where it loads the model
    try:
        return (OnnxruntimeBackend(model, ["CPUExecutionProvider"]),
                f"onnxruntime CPU: native does not compile it whole ({chosen.compile_note})")
    except LstmrtError as e:
        return chosen, f"{chosen.describe()} (onnxruntime cannot load it: {e})"


def _native(model: Model, options):
    """The native backend, every failure to build it a ModelError: at load there is no feed, so
    a node failing while constants fold is the model's fault, and anything unexpected is too."""
    from .native import NativeBackend
    try:
        return NativeBackend(model, options)
    except InputError as e:
        raise ModelError(f"'{model.origin}' fails while its constants are computed at load: {e}") from None
    except LstmrtError:
        raise
    except Exception as e:   # a malformed node that slipped past the checker
        raise ModelError(f"the native backend cannot load '{model.origin}': {type(e).__name__}: {e}") from None
