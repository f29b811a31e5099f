"""The first call of a chunk length a stream has not met (native: compiling that length's
program, then running it) against onnxruntime's call (1 intra-op thread) of the same new length, and both at a
length they have met: per model, streams of each backend fed the same run of distinct lengths,
the two backends alternating length by length, in one process.

    python benchmarks/bench_first_call.py
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import lstmrt
from lstmrt.bench import cpu_flags

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "examples/bracket_depth.onnx": ("x", lambda n: np.zeros((1, n, 61), np.float32), 1, {}),
    "tests/fixtures/models/torch_kws_gru2.onnx": ("x", lambda n: np.zeros((1, n, 40), np.float32), 1, {}),
    "tests/fixtures/models/torch_vad_op18.onnx": ("input", lambda n: np.zeros((1, n), np.float32), 512,
                                                  {"sr": np.array(16000, np.int64)}),
}
LENGTHS = 24


def _ms(call) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e3


def measure(path: str) -> dict:
    name, make, unit, extra = MODELS[path]
    one_thread = ort.SessionOptions()
    one_thread.intra_op_num_threads = one_thread.inter_op_num_threads = 1
    streams = {"native": lstmrt.InferenceSession(str(ROOT / path), backend="native").stream(),
               "onnxruntime": lstmrt.InferenceSession(str(ROOT / path), one_thread, backend="onnxruntime").stream()}
    for stream in streams.values():     # the first call of all (state set-up) is not what is measured
        stream.run({name: make(unit), **extra})
    first = {b: [] for b in streams}
    again = {b: [] for b in streams}
    for i in range(2, LENGTHS + 2):
        feed = {name: make(unit * i), **extra}
        for backend, stream in streams.items():
            first[backend].append(_ms(lambda: stream.run(feed)))
            again[backend].append(_ms(lambda: stream.run(feed)))
    return {b: (float(np.median(first[b])), float(np.median(again[b]))) for b in streams}


def main() -> None:
    print(f"# onnxruntime {ort.__version__} (1 intra-op thread), CPU flags: {' '.join(cpu_flags())}")
    print(f"# median over {LENGTHS} new chunk lengths; ms per call")
    print(f"{'model':44} {'native new':>10} {'native met':>10} {'ort new':>8} {'ort met':>8}")
    for path in MODELS:
        m = measure(path)
        print(f"{path:44} {m['native'][0]:10.2f} {m['native'][1]:10.3f} {m['onnxruntime'][0]:8.2f} "
              f"{m['onnxruntime'][1]:8.3f}")


if __name__ == "__main__":
    main()
