"""`lstmrt bench`: per-call time of any model on each backend, side by side, in one process."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np


from .errors import LstmrtError, StreamError
from .model import Model
from .session import InferenceSession
from .state_pairs import RECURRENT_OPS
from .state_pairs import batch_axes, time_axes
from .verify import random_feed


def cpu_flags() -> list:
    """The CPU's vector-extension flags (AVX, FMA, AMX), for a benchmark's header line."""
    if not os.path.exists("/proc/cpuinfo"):
        return []
    with open("/proc/cpuinfo") as f:
        return sorted({flag for line in f if line.startswith("flags") for flag in line.split()[2:]
                       if flag.startswith(("avx", "fma", "amx"))})


@dataclass
class Row:
    backend: str
    path: str            # "run" (state passed in) or "stream" (state carried)
    us_per_call: float
    steps_per_s: float
    gflops: float
    batch: int = 1        # of the feed timed (given inputs may differ from --batch/--chunk)
    steps: int = 1


def recurrent_flops(model: Model, batch: int, steps: int) -> float:
    """Multiply-adds x 2 of every recurrent node's input and recurrent products."""
    total = 0.0
    for node in model.graph.node:
        if node.op_type in RECURRENT_OPS and node.input[1] in model.initializers and node.input[2] in model.initializers:
            W, R = model.initializers[node.input[1]], model.initializers[node.input[2]]
            total += 2.0 * W.shape[0] * W.shape[1] * (W.shape[2] + R.shape[2]) * batch * steps
    return total


def _calls_per_clock_read(fn) -> int:
    """Runs fn once (a warm-up); quick calls are then timed ten at a time, so reading the clock
    stays out of the figure."""
    start = time.perf_counter()
    fn()
    return 10 if time.perf_counter() - start < 1e-3 else 1


def _window(fn, seconds: float, group: int) -> float:
    """Mean seconds per call over one window of at least `seconds` and 3 calls."""
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or calls < 3:
        for _ in range(group):
            fn()
        calls += group
    return elapsed / calls


def time_interleaved(fns: list, budget_s: float, rounds: int = 5, on_round=None) -> list[float]:
    """Seconds per call of each fn, given budget_s each.  The fns take turns in `rounds` rounds
    and each keeps its quickest window, so a slow spell of a shared machine falls on all of
    them alike instead of on whichever was being timed."""
    groups = [_calls_per_clock_read(fn) for fn in fns]
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, (fn, group) in enumerate(zip(fns, groups)):
            best[i] = min(best[i], _window(fn, budget_s / rounds, group))
        if on_round:
            on_round()
    return best


def time_per_call(fn, budget_s: float, windows: int = 5) -> float:
    """Seconds per call: the mean in the quickest of `windows` equal time windows."""
    return time_interleaved([fn], budget_s, windows)[0]


def sessions(path: str, backends: list, threads: int, skipped: list | None = None) -> dict:
    """{label: session} for each backend asked for that loads the model; why the others did not
    goes to `skipped` (bench times what runs rather than stopping at the first refusal)."""
    import onnxruntime
    made, skipped = {}, skipped if skipped is not None else []
    for name in backends:
        try:
            if name == "native":
                made["native"] = InferenceSession(path, backend="native", threads=threads)
            elif name == "onnxruntime":
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = options.inter_op_num_threads = threads
                made["onnxruntime CPU"] = InferenceSession(path, options, ["CPUExecutionProvider"])
                cuda = InferenceSession(path, backend="onnxruntime")
                if cuda.get_providers()[0] == "CUDAExecutionProvider":
                    made["onnxruntime CUDA"] = cuda
        except LstmrtError as e:
            skipped.append(f"{name}: {type(e).__name__}: {e}")
    return made


def _feed_size(model: Model, feed: dict, batch: int, steps: int) -> tuple[int, int]:
    """(batch, steps) of the feed as timed: given inputs may differ from --batch/--chunk."""
    times, batches = time_axes(model), batch_axes(model)
    for name, value in feed.items():
        if name in times and np.ndim(value) > max(times[name], batches.get(name, 0)):
            return (value.shape[batches[name]] if name in batches else batch), value.shape[times[name]]
    return batch, steps


def _runs(label: str, fn, skipped: list) -> bool:
    """fn runs once (else why not goes to `skipped`)."""
    try:
        fn()
        return True
    except LstmrtError as e:
        skipped.append(f"{label}: {type(e).__name__}: {e} (give real inputs with --input)")
        return False


def bench(path: str, backends: list, chunk: int, batch: int, threads: int = 1, budget_s: float = 1.0,
          on_round=None, rounds: int = 5, given: dict | None = None, skipped: list | None = None) -> list[Row]:
    """Time `run` (whole feed, state given) and `stream.run` (chunk after chunk) per backend,
    budget_s each, all cases taking turns (time_interleaved).  Inputs not `given` are random,
    shaped like the given ones; a backend or call that fails is noted in `skipped`, not timed."""
    skipped = skipped if skipped is not None else []
    model = Model(path)
    feed = random_feed(model, batch=batch, steps=chunk, given=given)
    batch, chunk = _feed_size(model, feed, batch, chunk)
    flops = recurrent_flops(model, batch, chunk)
    cases = []   # (backend, call path, fn)
    for label, sess in sessions(path, backends, threads, skipped).items():
        run = lambda sess=sess: sess.run(None, feed)   # noqa: E731
        if _runs(f"{label} run", run, skipped):
            cases.append((label, "run", run))
        try:
            stream = sess.stream()
        except StreamError:
            continue
        streamed = {k: v for k, v in feed.items() if k not in stream.pairs}
        step = lambda stream=stream, streamed=streamed: stream.run(streamed)   # noqa: E731
        if _runs(f"{label} stream", step, skipped):
            stream.reset()
            cases.append((label, "stream", step))
    if not cases:
        return []
    seconds = time_interleaved([fn for _, _, fn in cases], budget_s, rounds, on_round)
    return [Row(label, call, t * 1e6, batch * chunk / t, flops / t / 1e9, batch, chunk)
            for (label, call, _), t in zip(cases, seconds)]


def with_ratios(rows: list[Row]) -> list[tuple]:
    """Rows with the speed-up over onnxruntime CPU on the same call path (None where it was not timed)."""
    base = {r.path: r.us_per_call for r in rows if r.backend == "onnxruntime CPU"}
    return [(r, base[r.path] / r.us_per_call if r.path in base else None) for r in rows]


def profile(path: str, batch: int, chunk: int, threads: int = 1, calls: int = 200, given: dict | None = None) -> list:
    """[(instruction, seconds per call)] of the native compiled program for bench's feed."""
    model = Model(path)
    sess = InferenceSession(path, backend="native", threads=threads)
    return sess.profile(random_feed(model, batch=batch, steps=chunk, given=given), calls=calls)
