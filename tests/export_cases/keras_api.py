"""The Python API on in-memory Keras models (run in its own process)."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import numpy as np  # noqa: E402
import keras  # noqa: E402

from lstmrt.exporters import ExportError, Report, export  # noqa: E402

keras.utils.set_random_seed(1)
x = keras.Input((None, 3), name="x")
y = keras.layers.GRU(5, return_sequences=True)(x)
model = keras.Model(x, keras.layers.Dense(2)(y))
for w in model.weights:   # not at init
    w.assign(np.random.default_rng(0).standard_normal(w.shape).astype("float32") * 0.3)
report = export(model, None, example_input=np.zeros((2, 4, 3), np.float32))
assert isinstance(report, Report) and report.max_err < 1e-4, report
assert report.state_pairs == {"gru.h_in": "gru.h_out"}, report.state_pairs
print(report)
plain = export(model, None, state=False)
assert not plain.state_pairs
try:
    export(keras.Sequential([keras.layers.LSTM(3)]), None)   # not built: no input shape
except ExportError as e:
    assert "not built" in str(e)
else:
    raise AssertionError("unbuilt Sequential accepted")
print("API OK")
