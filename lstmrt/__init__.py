"""lstmrt: run and stream ONNX LSTM/GRU/RNN models on a SIMD C kernel."""
from .errors import (InputError, KernelError, LstmrtError, ModelError, OptionError, StreamError,
                     UnsupportedModelError)
from .kernel import available_simd_paths
from .session import InferenceSession

__version__ = "0.1.0"
__all__ = ["InferenceSession", "LstmrtError", "ModelError", "UnsupportedModelError", "InputError", "OptionError",
           "StreamError", "KernelError", "available_simd_paths", "__version__"]
