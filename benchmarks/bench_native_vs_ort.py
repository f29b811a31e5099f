"""Side-by-side: lstmrt's native kernel vs onnxruntime (1 intra-op thread), one process.

Each model is first checked numerically against onnxruntime, then timed on both
call paths of lstmrt (sess.run with state passed in, stream.run with state carried)
and on onnxruntime.  Prints microseconds per call and the speed ratio.

    python benchmarks/bench_native_vs_ort.py [--quick]
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import lstmrt

WORKLOADS = [  # (label, hidden, batch, steps)
    ("stream", 64, 1, 1), ("stream", 256, 1, 1), ("stream", 512, 1, 1),
    ("chunk", 256, 1, 16), ("batch", 256, 64, 32),
]
GATES = {"LSTM": 4, "GRU": 3}


def model(cell: str, hidden: int):
    rng = np.random.default_rng(0)
    G, I = GATES[cell], hidden
    inits = [numpy_helper.from_array(rng.uniform(-0.1, 0.1, s).astype(np.float32), n) for n, s in
             (("W", (1, G * hidden, I)), ("R", (1, G * hidden, hidden)), ("B", (1, 2 * G * hidden)))]
    lstm = cell == "LSTM"
    extra = {"linear_before_reset": 1} if cell == "GRU" else {}
    node = helper.make_node(cell, ["X", "W", "R", "B", "", "h0"] + (["c0"] if lstm else []),
                            ["Y", "hn"] + (["cn"] if lstm else []), hidden_size=hidden, **extra)
    st = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "B", hidden])  # noqa: E731
    graph = helper.make_graph(
        [node], "bench",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", I]), st("h0")] + ([st("c0")] if lstm else []),
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", 1, "B", hidden]), st("hn")]
        + ([st("cn")] if lstm else []), inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def per_call_us(fn, budget_s: float) -> float:
    fn()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < budget_s:
        for _ in range(10):
            fn()
        calls += 10
    return elapsed / calls * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter timing per case")
    budget = 0.3 if ap.parse_args().quick else 1.5
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    print(f"# {platform.processor() or platform.machine()}, lstmrt SIMD paths: {lstmrt.available_simd_paths()}")
    print(f"{'cell':5} {'workload':8} {'H':>4} {'B':>3} {'T':>3} {'ort us':>9} {'run us':>9} {'stream us':>9} "
          f"{'run x':>6} {'stream x':>8} {'GFLOP/s':>8}")
    for cell in ("LSTM", "GRU"):
        for label, H, B, T in WORKLOADS:
            proto = model(cell, H)
            ref = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
            sess = lstmrt.InferenceSession(proto, backend="native")
            rng = np.random.default_rng(1)
            feed = {i.name: rng.standard_normal([{"T": T, "B": B}.get(d, d) for d in i.shape]).astype(np.float32)
                    for i in ref.get_inputs()}
            diff = max(np.abs(a - b).max() for a, b in zip(sess.run(None, feed), ref.run(None, feed)))
            assert diff < 1e-4, f"{cell} H={H}: native differs from onnxruntime by {diff}"
            stream = sess.stream()
            x = {"X": feed["X"]}
            t_ort = per_call_us(lambda: ref.run(None, feed), budget)
            t_run = per_call_us(lambda: sess.run(None, feed), budget)
            t_stream = per_call_us(lambda: stream.run(x), budget)
            flops = 2 * GATES[cell] * H * (H + H) * B * T
            print(f"{cell:5} {label:8} {H:4} {B:3} {T:3} {t_ort:9.1f} {t_run:9.1f} {t_stream:9.1f} "
                  f"{t_ort / t_run:6.2f} {t_ort / t_stream:8.2f} {flops / t_run / 1e3:8.1f}")


if __name__ == "__main__":
    main()
