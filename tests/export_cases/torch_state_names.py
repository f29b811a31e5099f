"""Exported state names follow the module path the user wrote, the same whether the model was
scripted, traced or handed over eagerly (run in its own process: imports torch)."""
import os
import sys
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import lstmrt  # noqa: E402
from exporters.pytorch import export  # noqa: E402

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
print("STATE NAMES OK")
