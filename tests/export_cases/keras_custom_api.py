"""Lambda and custom layers through the Python API (run in its own process): what TensorFlow
traces and tf2onnx converts exports (checked against Keras); what it cannot is refused
naming the layer."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import numpy as np  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from lstmrt.exporters import ExportError, export  # noqa: E402

L = keras.layers
keras.utils.set_random_seed(2)


class Scale(L.Layer):                      # a custom layer with its own weight
    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.w + 0.5


def model_with(middle):
    x = keras.Input((None, 3), name="x")
    y = L.LSTM(4, return_sequences=True)(x)
    return keras.Model(x, L.Dense(2)(middle(y)))


custom = model_with(Scale(name="scale"))
custom.get_layer("scale").w.assign(np.array([0.5, -1.0, 2.0, 1.5], np.float32))
report = export(custom, None)
assert report.max_err < 1e-4 and report.state_pairs, report
print(report)

traced = export(model_with(L.Lambda(lambda t: t * 2.0 - tf.reduce_max(t, axis=-1, keepdims=True), name="lam")), None)
assert traced.max_err < 1e-4, traced
print(traced)

untraceable = model_with(L.Lambda(lambda t: tf.numpy_function(np.sort, [t], tf.float32), name="py_sort",
                                  output_shape=(None, 4)))
try:
    export(untraceable, None)
except ExportError as e:
    message = str(e)
    assert "layer 'py_sort' (Lambda)" in message and "PyFunc" in message and "built-in Keras layers" in message, message
    print("refused:", message)
else:
    raise AssertionError("a Lambda calling numpy was exported")
print("CUSTOM OK")
