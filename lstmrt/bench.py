"""`lstmrt bench`: per-call time of any model on each backend, side by side, in one process."""
from __future__ import annotations

import time
from dataclasses import dataclass


from .errors import StreamError
from .model import Model
from .session import InferenceSession
from .state_pairs import RECURRENT_OPS
from .verify import random_feed


@dataclass
class Row:
    backend: str
    path: str            # "run" (state passed in) or "stream" (state carried)
    us_per_call: float
    steps_per_s: float
    gflops: float


def recurrent_flops(model: Model, batch: int, steps: int) -> float:
    """Multiply-adds x 2 of every recurrent node's input and recurrent products."""
    total = 0.0
    for node in model.graph.node:
        if node.op_type in RECURRENT_OPS and node.input[1] in model.initializers and node.input[2] in model.initializers:
            W, R = model.initializers[node.input[1]], model.initializers[node.input[2]]
            total += 2.0 * W.shape[0] * W.shape[1] * (W.shape[2] + R.shape[2]) * batch * steps
    return total


def time_per_call(fn, budget_s: float, windows: int = 5) -> float:
    """Seconds per call: the mean in the quickest of `windows` equal time windows (at least 3
    calls each), so a burst of other work on the machine does not land in the figure."""
    start = time.perf_counter()
    fn()
    group = 10 if time.perf_counter() - start < 1e-3 else 1   # quick calls: read the clock less often
    best = float("inf")
    for _ in range(windows):
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < budget_s / windows or calls < 3:
            for _ in range(group):
                fn()
            calls += group
        best = min(best, elapsed / calls)
    return best


def sessions(path: str, backends: list, threads: int) -> dict:
    import onnxruntime
    made = {}
    for name in backends:
        if name == "native":
            made["native"] = InferenceSession(path, backend="native", threads=threads)
        elif name == "onnxruntime":
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = threads
            sess = InferenceSession(path, options, ["CPUExecutionProvider"])
            made["onnxruntime CPU"] = sess
            cuda = InferenceSession(path, backend="onnxruntime")
            if cuda.get_providers()[0] == "CUDAExecutionProvider":
                made["onnxruntime CUDA"] = cuda
    return made


def bench(path: str, backends: list, chunk: int, batch: int, threads: int = 1, budget_s: float = 1.0,
          on_case=None) -> list[Row]:
    """Time `run` (whole feed, state given) and `stream.run` (chunk after chunk) per backend."""
    model = Model(path)
    feed = random_feed(model, batch=batch, steps=chunk)
    flops = recurrent_flops(model, batch, chunk)
    rows = []
    for label, sess in sessions(path, backends, threads).items():
        t = time_per_call(lambda: sess.run(None, feed), budget_s)
        rows.append(Row(label, "run", t * 1e6, batch * chunk / t, flops / t / 1e9))
        if on_case:
            on_case()
        try:
            stream = sess.stream()
        except StreamError:
            continue
        streamed = {k: v for k, v in feed.items() if k not in stream.pairs}
        t = time_per_call(lambda: stream.run(streamed), budget_s)
        rows.append(Row(label, "stream", t * 1e6, batch * chunk / t, flops / t / 1e9))
        if on_case:
            on_case()
    return rows


def with_ratios(rows: list[Row]) -> list[tuple]:
    """Rows with the speed-up over onnxruntime CPU on the same call path."""
    base = {r.path: r.us_per_call for r in rows if r.backend == "onnxruntime CPU"}
    return [(r, base[r.path] / r.us_per_call if r.path in base else float("nan")) for r in rows]
