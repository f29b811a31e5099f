"""The onnxruntime backend: CUDA where a CUDA session really loads, else CPU.

onnxruntime-gpu lists CUDA as available even where its libraries cannot load, so
the device is read from the created session's providers, never from the list.
On CUDA, streams bind their state with IO binding, so it stays on the device
between calls instead of travelling to the host and back each step.  On the CPU
the state is a numpy array and a step is a plain run: binding buys nothing there
and cost ~15 us a call (twice the shipped example's whole run).
"""
from __future__ import annotations

import contextlib
import io
import os

import numpy as np

from ..errors import InputError, LstmrtError, ModelError
from ..layout import to_layout0
from ..model import Model

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
_QUIET = 4   # onnxruntime log level: fatal only; provider-load errors are noise (raised errors still raise)


def _ort():
    import onnxruntime
    onnxruntime.set_default_logger_severity(_QUIET)
    return onnxruntime


# onnxruntime cannot run a session inherited across fork(): its thread pool stayed in the parent,
# and a run in the child may wait on it forever (so may building a new session there).  Each fork
# bumps this generation; a backend from an older one refuses to run rather than hang.
_FORKS = [0]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _FORKS.__setitem__(0, _FORKS[0] + 1))


# sessions made before a fork and dropped in the child: kept there, never destroyed (onnxruntime's
# destructor joins its pool's threads, which the child does not have: measured under ASan, a
# session collected in a child hung 4 times in 5 and crashed in pthread_join once)
_INHERITED: list = []


def _forked() -> LstmrtError:
    return LstmrtError("this session's onnxruntime backend was created before fork(), and onnxruntime cannot run "
                       "a session inherited by a forked process (it may hang): create the InferenceSession after "
                       "the fork, or use backend='native', which can")


def cuda_listed() -> bool:
    return CUDA in _ort().get_available_providers()


def _refused(error: Exception) -> InputError:
    """onnxruntime's own exception types, as lstmrt's: the feed is what made this call fail."""
    message = str(error).strip()
    return InputError(f"onnxruntime failed on this feed: {message.splitlines()[0] if message else type(error).__name__}")


class OnnxruntimeBackend:
    name = "onnxruntime"

    def __init__(self, model: Model, providers: list | None = None, sess_options=None):
        ort = _ort()
        self.model = model
        options = sess_options or ort.SessionOptions()
        options.log_severity_level = _QUIET
        requested = list(providers) if providers else ([CUDA, CPU] if cuda_listed() else [CPU])
        self._generation = _FORKS[0]
        try:
            # onnxruntime prints "EP Error ... Falling back" to stdout when a provider fails on a
            # model it then refuses anyway: the ModelError below says it once
            with contextlib.redirect_stdout(io.StringIO()):
                self.session = ort.InferenceSession(to_layout0(model.proto).SerializeToString(), options,
                                                    providers=requested)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelError(f"onnxruntime cannot load '{model.origin}': {e}") from None
        self.providers = self.session.get_providers()
        self.device = "cuda" if CUDA in self.providers else "cpu"
        self.bind_state = self.device == "cuda"   # stream state as OrtValues, kept on the device
        self._ort = ort

    def __del__(self):
        if getattr(self, "_generation", _FORKS[0]) != _FORKS[0] and hasattr(self, "session"):
            _INHERITED.append(self.session)

    def describe(self) -> str:
        return f"onnxruntime {'CUDA' if self.device == 'cuda' else 'CPU'}"

    def run(self, feeds: dict, output_names: list) -> list:
        if self._generation != _FORKS[0]:
            raise _forked()
        try:
            return self.session.run(output_names, feeds)
        except Exception as e:   # onnxruntime's InvalidArgument, Fail, RuntimeException
            raise _refused(e) from None

    # -- streams: state as OrtValues on CUDA, numpy arrays on the CPU --------------
    def from_host(self, array: np.ndarray):
        array = np.ascontiguousarray(array)
        return self._ort.OrtValue.ortvalue_from_numpy(array, self.device, 0) if self.bind_state else array

    @staticmethod
    def to_host(value) -> np.ndarray:
        return value if isinstance(value, np.ndarray) else value.numpy()

    @staticmethod
    def shape_of(value) -> tuple:
        return value.shape if isinstance(value, np.ndarray) else tuple(value.shape())

    def run_stateful(self, feeds: dict, state: dict, pairs: dict, output_names: list):
        """Outputs on the host; the new state where the session put it (on CUDA, as OrtValues)."""
        if self._generation != _FORKS[0]:
            raise _forked()
        if not self.bind_state:
            try:
                results = self.session.run(output_names + list(pairs.values()), {**feeds, **state})
            except Exception as e:
                raise _refused(e) from None
            return results[:len(output_names)], dict(zip(pairs, results[len(output_names):]))
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name, value in state.items():
            binding.bind_ortvalue_input(name, value)
        for name in output_names:
            binding.bind_output(name, "cpu")
        for out in pairs.values():
            binding.bind_output(out, self.device)
        try:
            self.session.run_with_iobinding(binding)
        except Exception as e:
            raise _refused(e) from None
        values = binding.get_outputs()
        host = [v.numpy() for v in values[:len(output_names)]]
        return host, dict(zip(pairs, values[len(output_names):]))
