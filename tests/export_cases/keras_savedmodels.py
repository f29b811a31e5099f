"""Build small Keras models, train a few steps, and write them as TensorFlow SavedModel
folders with Keras 3's model.export(path); list them in OUTDIR/models.json.  Also a folder
whose saved_model.pb is corrupt.  Run in its own process:
python tests/export_cases/keras_savedmodels.py OUTDIR"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import keras  # noqa: E402

L = keras.layers
RNG = np.random.default_rng(0)


def sm_lstm():
    x = keras.Input((None, 5), name="x")
    y = L.LSTM(8, return_sequences=True, name="enc")(x)
    y = L.LSTM(6, return_sequences=True, name="dec")(y)
    return keras.Model(x, L.Dense(3, name="head")(y))


def sm_stateful():
    x = keras.Input((None, 3), batch_size=2, name="x")
    return keras.Model(x, L.Dense(2)(L.LSTM(5, stateful=True, return_sequences=True, name="live")(x)))


def sm_gru():
    x = keras.Input((None, 4), name="x")
    y = L.LSTM(6, return_sequences=True, name="front_lstm")(x)
    return keras.Model(x, L.Dense(2)(L.GRU(5, name="gru_middle")(y)))


MODELS = {"sm_lstm": sm_lstm, "sm_stateful": sm_stateful, "sm_gru": sm_gru}


def main(outdir):
    keras.utils.set_random_seed(0)
    listing = {}
    for name, build in MODELS.items():
        model = build()
        model.compile("adam", "mse")
        batch = 2 if name == "sm_stateful" else 4
        xs = RNG.standard_normal((batch, 6) + tuple(model.inputs[0].shape[2:])).astype("float32")
        ys = np.asarray(model.predict(xs, verbose=0, batch_size=2))
        model.fit(xs, ys + RNG.standard_normal(ys.shape).astype("float32"), epochs=3, batch_size=2, verbose=0,
                  shuffle=False)
        if name == "sm_stateful":   # saved mid-stream: non-zero state, which tf2onnx freezes
            for layer in model.layers:
                if getattr(layer, "stateful", False):
                    layer.reset_state()
            model.predict(xs, verbose=0, batch_size=2)
        path = os.path.join(outdir, name)
        model.export(path, verbose=False)
        listing[name] = path
    corrupt = os.path.join(outdir, "sm_corrupt")
    os.makedirs(os.path.join(corrupt, "variables"))
    with open(os.path.join(corrupt, "saved_model.pb"), "wb") as f:
        f.write(b"\x0a\xff\xff not a SavedModel")
    listing["sm_corrupt"] = corrupt
    with open(os.path.join(outdir, "models.json"), "w") as f:
        json.dump(listing, f)


if __name__ == "__main__":
    main(sys.argv[1])
