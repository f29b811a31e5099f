"""One copy of the packed weights per session, whatever the number of streams."""
import gc
import os
from pathlib import Path

import numpy as np
import pytest

import lstmrt
from models import streaming_model

STATM = Path("/proc/self/statm")


def rss_bytes() -> int:
    gc.collect()
    return int(STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not STATM.exists(), reason="reads resident memory from /proc (Linux)")
@pytest.mark.parametrize("glue", [True, False], ids=["with glue", "bare cell"])
def test_streams_share_the_packed_weights(glue):
    from models import bare_cell
    hidden = 512
    model = streaming_model("LSTM", input_size=hidden, hidden=hidden) if glue else bare_cell("LSTM", hidden, hidden)
    x_name = "x" if glue else "X"
    shape = (1, 1, hidden)
    sess = lstmrt.InferenceSession(model, backend="native")
    one_copy = 2 * 4 * hidden * hidden * 4          # W and R, 4 gates, float32: 8 MiB; 40 copies: 320 MiB
    x = np.ones(shape, np.float32)
    warm = sess.stream()
    warm.run({x_name: x})
    before = rss_bytes()
    streams = [sess.stream() for _ in range(40)]
    for s in streams:
        s.run({x_name: x})
    grown = rss_bytes() - before
    assert grown < 0.25 * one_copy, f"40 streams grew resident memory by {grown / 2**20:.1f} MiB"
