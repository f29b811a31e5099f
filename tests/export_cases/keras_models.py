"""Build small Keras models of every covered layer kind, train a few steps, save them
(.keras, one .h5), and list them in OUTDIR/models.json.  Run in its own process:
python tests/export_cases/keras_models.py OUTDIR"""
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


def seq(features):
    return keras.Input((None, features), name="x")


def lstm_seq():
    x = seq(5)
    return keras.Model(x, L.Dense(3)(L.LSTM(8, return_sequences=True)(x))), {"x": (5,)}


def gru_stack():
    x = seq(4)
    y = L.GRU(6, return_sequences=True)(x)                 # reset_after=True (bias [2, 3H])
    y = L.GRU(5, reset_after=False)(y)                      # reset_after=False
    return keras.Model(x, L.Dense(2, activation="tanh")(y)), {"x": (4,)}


def simplernn():
    x = seq(3)
    y = L.SimpleRNN(6, return_sequences=True, activation="relu")(x)
    y = L.TimeDistributed(L.Dense(2))(L.Dropout(0.3)(y))
    return keras.Model(x, L.Activation("sigmoid")(y)), {"x": (3,)}


def bidirectional():
    x = seq(4)
    y = L.Bidirectional(L.LSTM(5, return_sequences=True))(x)
    y = L.Bidirectional(L.GRU(4), merge_mode="sum")(y)
    return keras.Model(x, L.Dense(2)(y)), {"x": (4,)}


def embedding_mask():
    x = keras.Input((None,), dtype="int32", name="tokens")
    y = L.Embedding(25, 6, mask_zero=True)(x)
    y = L.LSTM(7, return_sequences=True)(y)
    y = L.Dense(4, activation="softmax")(L.Dropout(0.2)(y))
    return keras.Model(x, y), {"tokens": "tokens25"}


def masking():
    x = seq(4)
    y = L.Masking(0.0)(x)
    y = L.GRU(6, return_sequences=True)(y)
    y = L.LSTM(5, recurrent_activation="hard_sigmoid")(y)
    return keras.Model(x, L.Dense(2, activation="relu")(y)), {"x": (4,)}


def initial_state():
    x, h0, c0 = seq(4), keras.Input((6,), name="h0"), keras.Input((6,), name="c0")
    y, h, c = L.LSTM(6, return_sequences=True, return_state=True)(x, initial_state=[h0, c0])
    return keras.Model([x, h0, c0], [L.Dense(2)(y), h, c]), {"x": (4,), "h0": "state", "c0": "state"}


def stateful():
    x = keras.Input((None, 3), batch_size=2, name="x")
    y = L.LSTM(5, stateful=True, return_sequences=True)(x)
    return keras.Model(x, L.Dense(2)(y)), {"x": (3,)}


def sequential():
    return keras.Sequential([keras.Input((None, 3), name="x"), L.LSTM(6), L.Dense(2, activation="relu")]), {"x": (3,)}


def conv_front():            # a "same" conv looks ahead: exports without state
    x = seq(3)
    y = L.Conv1D(4, 2, padding="same", name="conv_front")(x)
    return keras.Model(x, L.Dense(2)(L.LSTM(4)(y))), {"x": (3,)}


def unsupported():           # a generic RNN over a cell: no native ONNX node
    x = seq(3)
    y = L.RNN(L.LSTMCell(4), name="cell_rnn")(x)
    return keras.Model(x, L.Dense(2)(y)), {"x": (3,)}


MODELS = {"lstm_seq": (lstm_seq, ".keras"), "gru_stack": (gru_stack, ".keras"), "simplernn": (simplernn, ".h5"),
          "bidirectional": (bidirectional, ".keras"), "embedding_mask": (embedding_mask, ".keras"),
          "masking": (masking, ".keras"), "initial_state": (initial_state, ".keras"),
          "stateful": (stateful, ".keras"), "sequential": (sequential, ".keras"),
          "conv_front": (conv_front, ".keras"), "unsupported": (unsupported, ".keras")}


def data(spec, batch=4, steps=6):
    out = []
    for name, s in spec.items():
        if s == "tokens25":
            v = RNG.integers(1, 25, (batch, steps))
            v[1, 4:] = 0                        # padded entries
            out.append(v.astype("int32"))
        elif s == "state":
            out.append(RNG.standard_normal((batch, 6)).astype("float32"))
        else:
            out.append(RNG.standard_normal((batch, steps) + s).astype("float32"))
    return out


def main(outdir):
    keras.utils.set_random_seed(0)
    listing = {}
    for name, (build, ext) in MODELS.items():
        model, spec = build()
        model.compile("adam", "mse")
        xs = data(spec, batch=2 if name == "stateful" else 4)
        ys = model.predict(xs if len(xs) > 1 else xs[0], verbose=0, batch_size=2)
        ys = ys if isinstance(ys, list) else [ys]
        targets = [np.asarray(y) + RNG.standard_normal(np.shape(y)).astype("float32") for y in ys]
        model.fit(xs if len(xs) > 1 else xs[0], targets if len(targets) > 1 else targets[0],
                  epochs=3, batch_size=2, verbose=0, shuffle=False)
        if name == "stateful":
            for layer in model.layers:
                if hasattr(layer, "reset_state") and getattr(layer, "stateful", False):
                    layer.reset_state()
        path = os.path.join(outdir, name + ext)
        model.save(path)
        listing[name] = path
    with open(os.path.join(outdir, "models.json"), "w") as f:
        json.dump(listing, f)


if __name__ == "__main__":
    main(sys.argv[1])
