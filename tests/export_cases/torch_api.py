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


class Crnn(nn.Module):              # a 2-D conv over (frequency, time): causal in time, "same" in frequency
    def __init__(self):
        super().__init__()
        self.conv, self.rnn = nn.Conv2d(1, 3, (3, 3), padding=(1, 2)), nn.GRU(12, 5, batch_first=True)

    def forward(self, x):             # x [B, T, F=4] -> [B, 1, F, T]
        y = torch.relu(self.conv(x.transpose(1, 2).unsqueeze(1))[..., :-2])
        return self.rnn(y.flatten(1, 2).transpose(1, 2))[0]


crnn = export(Crnn(), None, example_input=np.zeros((2, 8, 4), np.float32))
assert crnn.max_err < 1e-4 and crnn.state_pairs.get("conv.context_in") == "conv.context_out", crnn
assert any(c.streamed for c in crnn.verification.checks), crnn          # the streamed check ran and passed
print(crnn)
print("API OK")
