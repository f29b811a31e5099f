"""Keras models with the layers people put around recurrent ones: one model per layer family
(time-axis convolutions and pooling, normalisation, merges, reshapes, padding, rescaling,
attention, a two-input/two-output functional model with shared layers), trained a few steps,
saved as .keras and listed in OUTDIR/models.json.
python tests/export_cases/keras_layer_models.py OUTDIR"""
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


def seq(features, name="x"):
    return keras.Input((None, features), name=name)


def conv_causal():          # streams: two causal convs' context carried as state
    x = seq(4)
    y = L.Conv1D(6, 3, padding="causal", dilation_rate=2, activation="relu", name="conv_a")(x)
    y = L.Conv1D(5, 2, padding="causal", activation="gelu", name="conv_b")(y)
    return keras.Model(x, L.Dense(2)(L.LSTM(7, return_sequences=True)(y)))


def conv_same():            # looks ahead: exports plain, stream() refuses naming the layer
    x = seq(4)
    y = L.Conv1D(6, 3, padding="same", name="conv_same")(x)
    return keras.Model(x, L.GRU(5, return_sequences=True)(y))


def conv_strided():         # causal, stride 2: chunks of whole strides
    x = seq(4)
    y = L.Conv1D(6, 4, strides=2, padding="causal", groups=2, name="conv_stride")(x)   # grouped too
    return keras.Model(x, L.Dense(2)(L.LSTM(5, return_sequences=True)(y)))


def conv_valid():           # shortens the sequence: exports plain
    x = seq(4)
    y = L.Conv1D(6, 3, padding="valid", name="conv_valid")(x)
    return keras.Model(x, L.Dense(2)(L.LSTM(5)(y)))


def separable():            # SeparableConv1D, DepthwiseConv1D (no padding="causal": left ZeroPadding1D): streams
    x = seq(4)
    y = L.SeparableConv1D(6, 3, depth_multiplier=2, name="sep")(L.ZeroPadding1D((2, 0))(x))
    y = L.DepthwiseConv1D(2, name="depth")(L.ZeroPadding1D((1, 0))(y))
    return keras.Model(x, L.Dense(2)(L.GRU(5, return_sequences=True)(y)))


def pool_local():           # non-overlapping pooling: streams in chunks of 4
    x = seq(4)
    y = L.Conv1D(6, 2, padding="causal", name="conv")(x)
    y = L.MaxPooling1D(2, name="max_pool")(y)
    y = L.LSTM(5, return_sequences=True)(y)
    y = L.AveragePooling1D(2, padding="same", name="avg_pool")(y)
    return keras.Model(x, L.Dense(2)(y))


def pool_global():          # pooling over the whole sequence: exports plain (streamed check fails)
    x = seq(4)
    y = L.LSTM(6, return_sequences=True)(x)
    y = L.Concatenate()([L.GlobalMaxPooling1D()(y), L.GlobalAveragePooling1D()(y)])
    return keras.Model(x, L.Dense(2)(y))


def norms():                # BatchNormalization, LayerNormalization
    x = seq(4)
    y = L.BatchNormalization()(x)
    y = L.LSTM(6, return_sequences=True)(y)
    y = L.LayerNormalization()(y)
    return keras.Model(x, L.TimeDistributed(L.Dense(2))(y))


def merges():               # Concatenate, Add, Subtract, Multiply, Average, Maximum
    x = seq(4)
    a = L.LSTM(5, return_sequences=True)(x)
    b = L.Dense(5, activation="tanh")(x)
    y = L.Concatenate()([L.Add()([a, b]), L.Subtract()([a, b]), L.Multiply()([a, b]),
                         L.Average()([a, b]), L.Maximum()([a, b])])
    return keras.Model(x, L.Dense(2)(y))


def reshapes():             # Reshape per step, TimeDistributed(Conv1D over features), (Flatten): streams
    x = seq(6)
    y = L.Reshape((-1, 2, 3))(x)
    y = L.TimeDistributed(L.Conv1D(4, 2, padding="same", name="per_step_conv"))(L.Permute((1, 3, 2))(y))
    y = L.TimeDistributed(L.Flatten())(y)
    return keras.Model(x, L.Dense(2)(L.GRU(5, return_sequences=True)(y)))


def repeat_vector():        # seq2seq: RepeatVector, Reshape, Permute, Flatten; exports plain
    x = seq(4)
    y = L.Dense(6)(L.LSTM(5)(x))
    y = L.Flatten()(L.Permute((2, 1))(L.Reshape((3, 2))(y)))
    y = L.LSTM(4, return_sequences=True)(L.RepeatVector(3)(y))
    return keras.Model(x, L.Dense(2)(y))


def padding():              # ZeroPadding1D + valid Conv1D (a causal conv), UpSampling1D: streams
    x = seq(4)
    y = L.Conv1D(5, 3, padding="valid", name="conv_padded")(L.ZeroPadding1D((2, 0), name="pad")(x))
    y = L.UpSampling1D(2)(y)
    return keras.Model(x, L.Dense(2)(L.LSTM(6, return_sequences=True)(y)))


def cropping():             # Cropping1D after the LSTM: exports plain (chunks would each be cropped)
    x = seq(4)
    y = L.Cropping1D((1, 0))(L.LSTM(5, return_sequences=True)(x))
    return keras.Model(x, L.Dense(2)(y))


def rescaling():            # Rescaling, Normalization (adapted)
    x = seq(4)
    norm = L.Normalization(axis=-1)
    norm.adapt(RNG.standard_normal((16, 5, 4)).astype("float32") * 3 + 1)
    y = norm(L.Rescaling(0.5, offset=0.25)(x))
    return keras.Model(x, L.Dense(2)(L.LSTM(5, return_sequences=True)(y)))


def attention():            # Attention and MultiHeadAttention over the sequence: exports plain
    x = seq(4)
    y = L.LSTM(8, return_sequences=True)(x)
    y = L.Add()([L.Attention()([y, y]), L.MultiHeadAttention(num_heads=2, key_dim=4)(y, y)])
    return keras.Model(x, L.Dense(2)(y))


def multi_io():             # two inputs, two outputs, a shared Dense and a shared LSTM
    a, b = seq(4, "xa"), seq(4, "xb")
    shared_dense, shared_lstm = L.Dense(6, activation="relu", name="shared_dense"), L.LSTM(5, name="shared_lstm",
                                                                                         return_sequences=True)
    ya, yb = shared_lstm(shared_dense(a)), shared_lstm(shared_dense(b))
    out_seq = L.Dense(2, name="per_step")(L.Add()([ya, yb]))
    out_last = L.Dense(3, name="last")(L.GRU(4)(yb))
    return keras.Model([a, b], [out_seq, out_last])


def go_backwards():         # refused in our words
    x = seq(4)
    return keras.Model(x, L.LSTM(5, go_backwards=True, name="backwards")(x))


def lambda_file():          # a Lambda in a file: Keras loads it only with safe_mode=False
    x = seq(4)
    return keras.Model(x, L.LSTM(5)(L.Lambda(lambda t: t * 2.0, name="double")(x)))


MODELS = {f.__name__: f for f in (conv_causal, conv_same, conv_strided, conv_valid, separable, pool_local,
                                  pool_global, norms, merges, reshapes, repeat_vector, padding, cropping, rescaling,
                                  attention, multi_io, go_backwards, lambda_file)}


def main(outdir, names):
    keras.utils.set_random_seed(0)
    listing = {}
    for name in names:
        model = MODELS[name]()
        model.compile("adam", "mse")
        xs = [RNG.standard_normal((4, 8) + tuple(t.shape[2:])).astype("float32") for t in model.inputs]
        ys = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
        ys = ys if isinstance(ys, list) else [ys]
        targets = [np.asarray(y) + RNG.standard_normal(np.shape(y)).astype("float32") for y in ys]
        model.fit(xs if len(xs) > 1 else xs[0], targets if len(targets) > 1 else targets[0],
                  epochs=2, batch_size=2, verbose=0)      # weights (and BN statistics) not at init
        path = os.path.join(outdir, name + ".keras")
        model.save(path)
        listing[name] = path
    with open(os.path.join(outdir, "models.json"), "w") as f:
        json.dump(listing, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or list(MODELS))
