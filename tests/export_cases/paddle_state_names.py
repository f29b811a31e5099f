"""Exported state names follow what the user wrote (run in its own process: imports paddle).

An in-memory nn.Layer: lifted state by the sublayer path (`enc.l1.c_in` for the second layer of a
stacked LSTM, `block.gru.h_in` one level down, `srnn.h_in` for a grafted SimpleRNN), a state the
forward takes by its argument name (`h0` -> `h0_out`).  A saved program keeps no attribute names:
its state is named by the layer classes Paddle recorded (`LSTM.l0.h_in`, `Block.GRU.h_in`), the
same however many layers the saving process had made before.  Each model is exported to a file,
and the file alone (its metadata) tells `stream()` the pairs, which stream as Paddle computes."""
import json
import os
import tempfile
import warnings

import numpy as np
import onnx
import paddle
from paddle import nn

import lstmrt
from lstmrt.exporters import export

warnings.simplefilter("ignore")
paddle.seed(0)
paddle.set_device("cpu")


class Block(nn.Layer):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(6, 4)

    def forward(self, x):
        return self.gru(x)[0]


class Net(nn.Layer):
    def __init__(self):
        super().__init__()
        self.enc = nn.LSTM(3, 6, num_layers=2)
        self.block = Block()
        self.srnn = nn.SimpleRNN(4, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        return self.head(self.srnn(self.block(self.enc(x)[0]))[0])


class OwnState(nn.Layer):
    def __init__(self):
        super().__init__()
        self.enc = nn.LSTM(3, 6, num_layers=2)
        self.dec = nn.GRU(6, 4)

    def forward(self, x, h0, c0):
        y, (h, c) = self.enc(x, (h0, c0))
        return self.dec(y)[0], h, c


def lifted(names):
    return {f"{n}.{k}_in": f"{n}.{k}_out" for n, kinds in names for k in kinds}


def check(path, pairs, feed, want, output, state_feed=None):
    """The file's metadata holds `pairs`; stream() finds them with no pairing given and streams
    `feed` in uneven chunks to `want` (the Paddle model's whole call)."""
    meta = json.loads({p.key: p.value for p in onnx.load(path).metadata_props}["lstmrt.state_pairs"])
    assert meta == pairs, (path, meta)
    for backend in ("native", "onnxruntime"):
        stream = lstmrt.InferenceSession(path, backend=backend).stream()
        assert stream.pairs == pairs, (path, backend, stream.pairs)
        parts = [stream.run({"x": feed[:, a:b], **(state_feed if a == 0 and state_feed else {})}, [output])[0]
                 for a, b in [(0, 2), (2, 3), (3, 7)]]
        err = np.abs(np.concatenate(parts, axis=1) - want).max()
        assert err < 1e-4, (path, backend, err)


rng = np.random.default_rng(0)
feed = rng.standard_normal((2, 7, 3)).astype(np.float32)
x = np.zeros((2, 5, 3), np.float32)
with tempfile.TemporaryDirectory() as tmp:
    # in memory: the sublayer paths
    net = Net()
    net.eval()
    want = net(paddle.to_tensor(feed)).numpy()
    path = os.path.join(tmp, "net.onnx")
    pairs = lifted([("enc.l0", "hc"), ("enc.l1", "hc"), ("block.gru", "h"), ("srnn", "h")])
    report = export(net, path, example_input=x)          # verified against Paddle
    assert report.state_pairs == pairs, report.state_pairs
    check(path, pairs, feed, want, report.outputs[0][0])

    # in memory, the forward's own state: its argument names, the returned final state `<name>_out`
    own = OwnState()
    own.eval()
    h0, c0 = (rng.standard_normal((2, 2, 6)).astype(np.float32) for _ in range(2))
    want = own(paddle.to_tensor(feed), paddle.to_tensor(h0), paddle.to_tensor(c0))[0].numpy()
    path = os.path.join(tmp, "own.onnx")
    pairs = {"h0": "h0_out", "c0": "c0_out", **lifted([("dec", "h")])}
    report = export(own, path, example_input=(x, h0, c0))
    assert report.state_pairs == pairs, report.state_pairs
    assert [n for n, _, _ in report.inputs][:3] == ["x", "h0", "c0"], report.inputs
    check(path, pairs, feed, want, report.outputs[0][0], {"h0": h0, "c0": c0})

    # saved programs: the layer classes, the same on a second save (Paddle's counters have moved)
    pairs = lifted([("LSTM.l0", "hc"), ("LSTM.l1", "hc"), ("Block.GRU", "h"), ("SimpleRNN", "h")])
    want = net(paddle.to_tensor(feed)).numpy()
    for attempt in range(2):
        prefix = os.path.join(tmp, f"saved{attempt}")
        paddle.jit.save(net, prefix, input_spec=[paddle.static.InputSpec([None, None, 3], "float32", "x")])
        path = os.path.join(tmp, f"saved{attempt}.onnx")
        report = export(prefix + ".json", path)
        assert report.state_pairs == pairs, (attempt, report.state_pairs)
        check(path, pairs, feed, want, report.outputs[0][0])
print("STATE NAMES OK")
