"""Build small Paddle models of the covered layer kinds, train a few steps, save them with
paddle.jit.save (.json + .pdiparams), list them in OUTDIR/models.json.
python tests/export_cases/paddle_models.py OUTDIR"""
import contextlib
import io
import json
import os
import sys

import numpy as np
import paddle
from paddle import nn
from paddle.static import InputSpec

paddle.seed(0)
paddle.set_device("cpu")


class LstmSeq(nn.Layer):              # batch-major, Linear on every step
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.LSTM(5, 8), nn.Linear(8, 3)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)


class Gru2Last(nn.Layer):             # stacked GRU, last step, activation
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.GRU(4, 6, num_layers=2, dropout=0.2), nn.Linear(6, 2)

    def forward(self, x):
        y, _ = self.rnn(x)
        return paddle.tanh(self.head(y[:, -1]))


class BiGruTimeMajor(nn.Layer):       # bidirectional, time-major
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(4, 5, direction="bidirect", time_major=True)
        self.drop, self.head = nn.Dropout(0.3), nn.Linear(10, 2)

    def forward(self, x):
        y, _ = self.rnn(x)
        return nn.functional.relu(self.head(self.drop(y)))


class EmbLstm(nn.Layer):              # Embedding -> LSTM
    def __init__(self):
        super().__init__()
        self.emb, self.rnn, self.head = nn.Embedding(30, 6), nn.LSTM(6, 7), nn.Linear(7, 3)

    def forward(self, tokens):
        y, _ = self.rnn(self.emb(tokens))
        return nn.functional.sigmoid(self.head(y))


class LstmState(nn.Layer):            # initial states in, final states out
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.LSTM(4, 6), nn.Linear(6, 2)

    def forward(self, x, h0, c0):
        y, (h, c) = self.rnn(x, (h0, c0))
        return self.head(y), h, c


class Lstm2States(nn.Layer):          # stacked LSTM returning every layer's final h
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.LSTM(5, 6, num_layers=2), nn.Linear(6, 2)

    def forward(self, x):
        y, (h, c) = self.rnn(x)
        return self.head(y), h


class SimpleRnn(nn.Layer):            # paddle2onnx 2.1 drops SimpleRNN: grafted as a native RNN node
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.SimpleRNN(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)


class SimpleRnn2ReluState(nn.Layer):  # stacked relu SimpleRNN, time-major, initial state in, final out
    def __init__(self):
        super().__init__()
        self.rnn = nn.SimpleRNN(3, 5, num_layers=2, activation="relu", time_major=True)
        self.head = nn.Linear(5, 2)

    def forward(self, x, h0):
        y, h = self.rnn(x, h0)
        return self.head(y), h


class LstmSimpleRnns(nn.Layer):       # LSTM then two SimpleRNNs: the rnn ops are told apart by position
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.LSTM(3, 5), nn.SimpleRNN(5, 4, activation="relu"), nn.SimpleRNN(4, 3)

    def forward(self, x):
        return self.c(self.b(self.a(x)[0])[0])[0]


class SimpleRnnSeqLen(nn.Layer):      # sequence_length is not rebuilt: refused, layer named
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.SimpleRNN(3, 4), nn.Linear(4, 2)

    def forward(self, x, lens):
        y, _ = self.rnn(x, sequence_length=lens)
        return self.head(y)


class BiSimpleRnn2(nn.Layer):         # stacked bidirectional SimpleRNN returning every final state
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.SimpleRNN(3, 4, num_layers=2, direction="bidirect"), nn.Linear(8, 2)

    def forward(self, x):
        y, h = self.rnn(x)
        return self.head(y[:, -1]), h


class CausalConvLstm(nn.Layer):       # causal conv: padded both sides, right end cropped
    def __init__(self):
        super().__init__()
        self.conv, self.rnn, self.head = nn.Conv1D(4, 6, 3, padding=2), nn.LSTM(6, 5), nn.Linear(5, 2)

    def forward(self, x):
        y = nn.functional.relu(self.conv(x.transpose([0, 2, 1]))[:, :, :-2])
        return self.head(self.rnn(y.transpose([0, 2, 1]))[0])


class NonCausalConvGru(nn.Layer):     # a centred conv looks ahead: exports, does not stream
    def __init__(self):
        super().__init__()
        self.conv, self.rnn = nn.Conv1D(4, 6, 3, padding=1), nn.GRU(6, 5)

    def forward(self, x):
        return self.rnn(self.conv(x.transpose([0, 2, 1])).transpose([0, 2, 1]))[0]


class StridedConvLstm(nn.Layer):      # causal, stride 2 (pad 2 both sides, crop one output): whole strides
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1D(4, 6, 3, stride=2, padding=2)
        self.rnn, self.head = nn.LSTM(6, 5), nn.Linear(5, 2)

    def forward(self, x):
        y = self.conv(x.transpose([0, 2, 1]))[:, :, :-1]
        return self.head(self.rnn(y.transpose([0, 2, 1]))[0])


class SeqNormLstm(nn.Layer):          # normalised over the whole sequence: streams wrong, exports plain
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 5)

    def forward(self, x):
        y = self.rnn(x)[0]
        return y - y.mean(axis=1, keepdim=True)


class ProjLstm(nn.Layer):             # refused: ONNX's LSTM has no projection (paddle2onnx would abort)
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 6, proj_size=3)

    def forward(self, x):
        return self.rnn(x)[0]


F = "float32"
MODELS = {"lstm_seq": (LstmSeq, [([None, None, 5], F, (4, 6, 5))]),
          "gru2_last": (Gru2Last, [([None, None, 4], F, (4, 6, 4))]),
          "bigru_tm": (BiGruTimeMajor, [([None, None, 4], F, (6, 4, 4))]),
          "emb_lstm": (EmbLstm, [([None, None], "int64", (4, 6))]),
          "lstm_state": (LstmState, [([None, None, 4], F, (4, 6, 4)), ([1, None, 6], F, (1, 4, 6)),
                                     ([1, None, 6], F, (1, 4, 6))]),
          "lstm2_states": (Lstm2States, [([None, None, 5], F, (4, 6, 5))]),
          "simple_rnn": (SimpleRnn, [([None, None, 3], F, (4, 6, 3))]),
          "srnn2_relu_state": (SimpleRnn2ReluState, [([None, None, 3], F, (6, 4, 3)), ([2, None, 5], F, (2, 4, 5))]),
          "bisrnn2": (BiSimpleRnn2, [([None, None, 3], F, (4, 6, 3))]),
          "lstm_srnns": (LstmSimpleRnns, [([None, None, 3], F, (4, 6, 3))]),
          "srnn_seqlen": (SimpleRnnSeqLen, [([None, None, 3], F, (4, 6, 3)), ([None], "int64", (4,))]),
          "causal_conv": (CausalConvLstm, [([None, None, 4], F, (4, 8, 4))]),
          "noncausal_conv": (NonCausalConvGru, [([None, None, 4], F, (4, 8, 4))]),
          "strided_conv": (StridedConvLstm, [([None, None, 4], F, (4, 8, 4))]),
          "seq_norm": (SeqNormLstm, [([None, None, 4], F, (4, 8, 4))]),
          "proj_lstm": (ProjLstm, [([None, None, 4], F, (4, 8, 4))])}


def main(outdir):
    rng = np.random.default_rng(0)
    listing = {}
    for name, (cls, inputs) in MODELS.items():
        model = cls()
        opt = paddle.optimizer.Adam(learning_rate=1e-2, parameters=model.parameters())
        args = [paddle.to_tensor(rng.integers(0, 30, shape) if dtype == "int64" and len(shape) > 1
                                 else np.full(shape, 6) if dtype == "int64"
                                 else rng.standard_normal(shape).astype(dtype)) for _, dtype, shape in inputs]
        model.train()
        for _ in range(5):                       # a few steps: weights not at init
            out = model(*args)
            out = out if isinstance(out, (tuple, list)) else [out]
            loss = sum(((o - 0.5) ** 2).mean() for o in out)
            loss.backward()
            opt.step()
            opt.clear_grad()
        model.eval()
        names = {"lstm_state": ["x", "h0", "c0"], "srnn2_relu_state": ["x", "h0"], "emb_lstm": ["tokens"],
                 "srnn_seqlen": ["x", "lens"]}.get(name, ["x"])
        prefix = os.path.join(outdir, name)
        with contextlib.redirect_stdout(io.StringIO()):
            paddle.jit.save(model, prefix, input_spec=[InputSpec(s, d, n) for (s, d, _), n in zip(inputs, names)])
        listing[name] = prefix + (".json" if os.path.exists(prefix + ".json") else ".pdmodel")
    with open(os.path.join(outdir, "models.json"), "w") as f:
        json.dump(listing, f)


if __name__ == "__main__":
    main(sys.argv[1])
