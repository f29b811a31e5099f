"""The Python API on in-memory torch modules (run in its own process)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from lstmrt.exporters import Report, export  # noqa: E402

torch.manual_seed(0)


class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.GRU(3, 5, batch_first=True), nn.Linear(5, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


m = M()
with torch.no_grad():
    for p in m.parameters():
        p.add_(0.1)                                     # not at init
report = export(m, None, example_input=np.zeros((2, 4, 3), np.float32))
assert isinstance(report, Report) and report.max_err < 1e-4 and len(report.state_pairs) == 1, report
print(report)
assert not export(m, None, example_input=torch.zeros(2, 4, 3), state=False).state_pairs
print("API OK")
