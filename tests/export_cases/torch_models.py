"""Build small PyTorch models of every covered layer kind, train a few steps, save them as
TorchScript (torch.jit.save; scripted or traced), list them in OUTDIR/models.json.
python tests/export_cases/torch_models.py OUTDIR"""
import json
import os
import sys

import torch
from torch import nn

torch.manual_seed(0)


class LstmSeq(nn.Module):            # batch_first, Linear on every step
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.LSTM(5, 8, batch_first=True), nn.Linear(8, 3)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)


class Gru2Last(nn.Module):           # stacked, time-major, last step, dropout between layers
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.GRU(4, 6, num_layers=2, dropout=0.2), nn.Linear(6, 2)

    def forward(self, x):
        y, _ = self.rnn(x)
        return torch.tanh(self.head(y[-1]))


class BiLstm(nn.Module):             # bidirectional, batch_first
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.LSTM(4, 5, batch_first=True, bidirectional=True), nn.Linear(10, 2)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)


class RnnAct(nn.Module):             # Elman RNNs (relu, tanh), Dropout, activations
    def __init__(self):
        super().__init__()
        self.a = nn.RNN(3, 6, nonlinearity="relu", batch_first=True)
        self.b = nn.RNN(6, 4, batch_first=True)
        self.drop, self.head, self.act = nn.Dropout(0.3), nn.Linear(4, 2), nn.Sigmoid()

    def forward(self, x):
        y, _ = self.a(x)
        y, _ = self.b(torch.relu(self.drop(y)))
        return self.act(self.head(y))


class EmbGru(nn.Module):             # Embedding -> GRU
    def __init__(self):
        super().__init__()
        self.emb, self.rnn, self.head = nn.Embedding(30, 6), nn.GRU(6, 7, batch_first=True), nn.Linear(7, 3)

    def forward(self, tokens):
        y, _ = self.rnn(self.emb(tokens))
        return torch.softmax(self.head(y), dim=-1)


class LstmState(nn.Module):          # initial states passed in, final states returned
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.LSTM(4, 6, num_layers=2), nn.Linear(6, 2)

    def forward(self, x, h0, c0):
        y, (h, c) = self.rnn(x, (h0, c0))
        return self.head(y), h, c


class CellLoop(nn.Module):           # unsupported: a cell stepped in Python
    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(3, 4)

    def forward(self, x):
        h = torch.zeros(x.shape[1], 4)
        c = torch.zeros(x.shape[1], 4)
        for t in range(x.shape[0]):
            h, c = self.cell(x[t], (h, c))
        return h


class CausalConvLstm(nn.Module):     # causal convs: padded both sides + right crop, and left F.pad (dilated)
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3, padding=2)
        self.conv2 = nn.Conv1d(6, 5, 2, dilation=2)
        self.rnn, self.head = nn.LSTM(5, 7, batch_first=True), nn.Linear(7, 2)

    def forward(self, x):
        y = torch.relu(self.conv(x.transpose(1, 2))[:, :, :-2])
        y = self.conv2(nn.functional.pad(y, (2, 0)))
        return self.head(self.rnn(y.transpose(1, 2))[0])


class NonCausalConvGru(nn.Module):   # a centred conv looks ahead: exports, does not stream
    def __init__(self):
        super().__init__()
        self.conv, self.rnn = nn.Conv1d(4, 6, 3, padding=1), nn.GRU(6, 5, batch_first=True)

    def forward(self, x):
        return self.rnn(torch.tanh(self.conv(x.transpose(1, 2))).transpose(1, 2))[0]


class StridedConvLstm(nn.Module):    # causal, stride 2: chunks of whole strides
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3, stride=2)
        self.rnn, self.head = nn.LSTM(6, 5, batch_first=True), nn.Linear(5, 2)

    def forward(self, x):
        y = self.conv(nn.functional.pad(x.transpose(1, 2), (2, 0)))
        return self.head(self.rnn(y.transpose(1, 2))[0])


class ConvPoolLstm(nn.Module):       # causal conv, then non-overlapping max pooling (stride 2) along time
    def __init__(self):
        super().__init__()
        self.conv, self.pool = nn.Conv1d(4, 6, 2), nn.MaxPool1d(2)
        self.rnn, self.head = nn.LSTM(6, 5, batch_first=True), nn.Linear(5, 2)

    def forward(self, x):
        y = self.pool(self.conv(nn.functional.pad(x.transpose(1, 2), (1, 0))))
        return self.head(self.rnn(y.transpose(1, 2))[0])


class Crnn(nn.Module):               # a 2-D conv first: the CLI cannot guess the input, says so
    def __init__(self):
        super().__init__()
        self.conv, self.rnn = nn.Conv2d(1, 3, (3, 3), padding=(1, 2)), nn.GRU(12, 5, batch_first=True)

    def forward(self, x):
        y = torch.relu(self.conv(x.transpose(1, 2).unsqueeze(1))[..., :-2])
        return self.rnn(y.flatten(1, 2).transpose(1, 2))[0]


class SeqNormLstm(nn.Module):        # normalised over the whole sequence: streams wrong, exports plain
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 5, batch_first=True)

    def forward(self, x):
        y = self.rnn(x)[0]
        return y - y.mean(dim=1, keepdim=True)


class ProjLstm(nn.Module):           # refused: ONNX's LSTM has no projection
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 6, proj_size=3, batch_first=True)

    def forward(self, x):
        return self.rnn(x)[0]


def example(name):
    g = torch.Generator().manual_seed(1)
    return {"lstm_seq": (torch.randn(4, 6, 5, generator=g),),
            "gru2_last": (torch.randn(6, 4, 4, generator=g),),
            "bilstm": (torch.randn(4, 6, 4, generator=g),),
            "rnn_act": (torch.randn(4, 6, 3, generator=g),),
            "emb_gru": (torch.randint(0, 30, (4, 6), generator=g),),
            "lstm_state": (torch.randn(6, 4, 4, generator=g), torch.randn(2, 4, 6, generator=g),
                           torch.randn(2, 4, 6, generator=g)),
            "cell_loop": (torch.randn(6, 4, 3, generator=g),),
            "causal_conv": (torch.randn(4, 8, 4, generator=g),),
            "noncausal_conv": (torch.randn(4, 8, 4, generator=g),),
            "strided_conv": (torch.randn(4, 8, 4, generator=g),),
            "seq_norm": (torch.randn(4, 8, 4, generator=g),),
            "conv_pool": (torch.randn(4, 8, 4, generator=g),),
            "crnn": (torch.randn(4, 8, 4, generator=g),),
            "proj_lstm": (torch.randn(4, 8, 4, generator=g),)}[name]


MODELS = {"lstm_seq": (LstmSeq, "script"), "gru2_last": (Gru2Last, "script"), "bilstm": (BiLstm, "trace"),
          "rnn_act": (RnnAct, "script"), "emb_gru": (EmbGru, "trace"), "lstm_state": (LstmState, "script"),
          "cell_loop": (CellLoop, "trace"), "causal_conv": (CausalConvLstm, "trace"),
          "noncausal_conv": (NonCausalConvGru, "script"), "strided_conv": (StridedConvLstm, "trace"),
          "seq_norm": (SeqNormLstm, "script"), "proj_lstm": (ProjLstm, "script"), "conv_pool": (ConvPoolLstm, "trace"),
          "crnn": (Crnn, "trace")}


def main(outdir):
    listing = {}
    for name, (cls, how) in MODELS.items():
        model = cls()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        args = example(name)
        for _ in range(5):                     # a few steps: weights not at init
            out = model(*args)
            out = out if isinstance(out, tuple) else (out,)
            loss = sum(((o - 0.5) ** 2).mean() for o in out)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        scripted = torch.jit.script(model) if how == "script" else torch.jit.trace(model, args)
        path = os.path.join(outdir, name + ".pt")
        torch.jit.save(scripted, path)
        listing[name] = path
    with open(os.path.join(outdir, "models.json"), "w") as f:
        json.dump(listing, f)


if __name__ == "__main__":
    main(sys.argv[1])
