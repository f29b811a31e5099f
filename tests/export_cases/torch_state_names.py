"""Exported state names follow what the user wrote, the same whether the model was scripted,
traced or handed over eagerly: a lifted state by the module path (`lstm.l0.h_in` -> `lstm.l0.h_out`),
a state the forward takes by its argument name (`h0` -> `h0_out`).  Each model is exported to a
file, and the file alone (its metadata) tells `stream()` the pairs (run in its own process: imports torch)."""
import json
import os
import sys
import tempfile
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import lstmrt  # noqa: E402
from exporters.pytorch import export  # noqa: E402
from lstmrt.exporters import export as export_to_file  # noqa: E402

warnings.simplefilter("ignore")
torch.manual_seed(0)


class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(3, 4)
        self.lstm = nn.LSTM(4, 5, num_layers=2, batch_first=True)
        self.gru = nn.GRU(5, 6, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.gru(self.lstm(self.enc(x))[0])[0])


model = M().eval()
x = torch.zeros(2, 4, 3)
expected = {f"{m}.{k}_in": f"{m}.{k}_out" for m in ("lstm.l0", "lstm.l1") for k in "hc"} | {"gru.h_in": "gru.h_out"}
for label, module in (("traced", torch.jit.trace(model, x)), ("scripted", torch.jit.script(model)), ("eager", model)):
    exported = export(module, example_input=x)
    assert exported.pairs == expected, (label, exported.pairs)
    # the names are what a stream carries, and the state feeds back as the names say
    sess = lstmrt.InferenceSession(exported.model, backend="native")
    stream = sess.stream()
    assert stream.pairs == expected, (label, stream.pairs)
    feed = np.random.default_rng(0).standard_normal((2, 6, 3)).astype(np.float32)
    parts = [stream.run({"x": feed[:, a:b]})[0] for a, b in [(0, 2), (2, 6)]]
    with torch.no_grad():
        want = model(torch.from_numpy(feed)).numpy()
    assert np.abs(np.concatenate(parts, axis=1) - want).max() < 1e-4, label


class OwnState(nn.Module):
    """forward takes its state as arguments and returns the final state nested, (y, (hn, cn))."""
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 5, num_layers=2, batch_first=True)
        self.gru = nn.GRU(5, 4, batch_first=True)

    def forward(self, x, h0, c0):
        y, (hn, cn) = self.lstm(x, (h0, c0))
        return self.gru(y)[0], (hn, cn)


class OwnStateFlat(nn.Module):
    """The same state returned flat and in another order, (cn, y, hn), with other argument names."""
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(3, 5, batch_first=True)

    def forward(self, x, hidden, cell):
        y, (hn, cn) = self.rnn(x, (hidden, cell))
        return cn, y, hn


def carried_by_hand(model, feed, chunks):
    """OwnStateFlat in torch, chunk by chunk, with the state it returns fed back by hand."""
    hidden = cell = torch.zeros(1, feed.shape[0], 5)
    outs = []
    for a, b in chunks:
        with torch.no_grad():
            cell, y, hidden = model(torch.from_numpy(feed[:, a:b]), hidden, cell)
        outs.append(y.numpy())
    return np.concatenate(outs, axis=1)


own_cases = [
    (OwnState().eval(), ("h0", "c0"), 2, {"h0": "h0_out", "c0": "c0_out", "gru.h_in": "gru.h_out"},
     ["output_0", "h0_out", "c0_out", "gru.h_out"]),
    (OwnStateFlat().eval(), ("hidden", "cell"), 1, {"hidden": "hidden_out", "cell": "cell_out"},
     ["cell_out", "output_1", "hidden_out"]),
]
feed = np.random.default_rng(1).standard_normal((2, 7, 3)).astype(np.float32)
chunks = [(0, 3), (3, 4), (4, 7)]
with tempfile.TemporaryDirectory() as tmp:
    for model, state_names, layers, pairs, outputs in own_cases:
        example = (torch.zeros(2, 4, 3), torch.zeros(layers, 2, 5), torch.zeros(layers, 2, 5))
        for label, module in (("traced", torch.jit.trace(model, example)), ("scripted", torch.jit.script(model)),
                              ("eager", model)):
            where = f"{type(model).__name__} {label}"
            path = os.path.join(tmp, f"{type(model).__name__}_{label}.onnx")
            report = export_to_file(module, path, example_input=example)   # verified against torch
            assert report.state_pairs == pairs, (where, report.state_pairs)
            sess = lstmrt.InferenceSession(path)
            meta = json.loads({p.key: p.value for p in onnx.load(path).metadata_props}["lstmrt.state_pairs"])
            assert meta == pairs, (where, meta)
            assert [o.name for o in sess.get_outputs()] == outputs, (where, [o.name for o in sess.get_outputs()])
            stream = sess.stream()                      # no pairing given: the metadata's
            assert stream.pairs == pairs, (where, stream.pairs)
            y_name = outputs[0] if isinstance(model, OwnState) else "output_1"
            got = np.concatenate([stream.run({"x": feed[:, a:b]}, [y_name])[0] for a, b in chunks], axis=1)
            if isinstance(model, OwnState):             # the gru's lifted state starts at zero, as in torch
                with torch.no_grad():
                    zeros = torch.zeros(layers, 2, 5)
                    want = model(torch.from_numpy(feed), zeros, zeros)[0].numpy()
            else:
                want = carried_by_hand(model, feed, chunks)
            assert np.abs(got - want).max() < 1e-4, (where, np.abs(got - want).max())
print("STATE NAMES OK")
