"""GPU check: onnxruntime CUDA against the native kernel, stream state on the device, throughput.

    python benchmarks/gpu_check.py          # on a machine with an NVIDIA GPU and onnxruntime-gpu

1. CUDA results match native within 1e-4 (LSTM and GRU, several shapes, whole and streamed).
2. A CUDA stream keeps its state on the device between calls (its OrtValues live on 'cuda').
3. Throughput for batch sizes 1..256: sequences per second, CUDA vs native, in one run.
Exits 2 when no CUDA session loads, 1 when a check fails.
"""
from __future__ import annotations

import sys
import time

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import lstmrt

H, STEPS, TOLERANCE = 256, 32, 1e-4
GATES = {"LSTM": 4, "GRU": 3}


def model(cell: str):
    rng = np.random.default_rng(0)
    G, lstm = GATES[cell], cell == "LSTM"
    inits = [numpy_helper.from_array(rng.uniform(-0.1, 0.1, s).astype(np.float32), n)
             for n, s in (("W", (1, G * H, H)), ("R", (1, G * H, H)), ("B", (1, 2 * G * H)))]
    extra = {"linear_before_reset": 1} if cell == "GRU" else {}
    node = helper.make_node(cell, ["x", "W", "R", "B", "", "h0"] + (["c0"] if lstm else []),
                            ["y", "hn"] + (["cn"] if lstm else []), hidden_size=H, **extra)
    state = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "batch", H])  # noqa: E731
    graph = helper.make_graph(
        [node], cell, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["time", "batch", H]), state("h0")]
        + ([state("c0")] if lstm else []),
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["time", 1, "batch", H]), state("hn")]
        + ([state("cn")] if lstm else []), inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 8
    return m


def seconds_per_call(fn, repeats: int = 20) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> int:
    failures = 0
    for cell in GATES:
        proto = model(cell)
        gpu = lstmrt.InferenceSession(proto, backend="onnxruntime")
        if gpu.get_providers()[0] != "CUDAExecutionProvider":
            print(f"no CUDA session loads here (providers: {gpu.get_providers()})")
            return 2
        native = lstmrt.InferenceSession(proto, backend="native")
        rng = np.random.default_rng(1)
        for batch, steps in ((1, 1), (3, 17), (64, 32)):
            x = rng.standard_normal((steps, batch, H)).astype(np.float32)
            a, b = gpu.stream().run({"x": x})[0], native.stream().run({"x": x})[0]
            diff = float(np.abs(a - b).max())
            ok = diff <= TOLERANCE
            failures += not ok
            print(f"{cell} B={batch:3} T={steps:2}: CUDA vs native max diff {diff:.2e} {'ok' if ok else 'FAIL'}")
        stream = gpu.stream()
        x = rng.standard_normal((40, 2, H)).astype(np.float32)
        parts = [stream.run({"x": x[a:b]})[0] for a, b in ((0, 7), (7, 8), (8, 40))]
        devices = {v.device_name().lower() for v in stream._state.values()}
        diff = float(np.abs(np.concatenate(parts) - native.stream().run({"x": x})[0]).max())
        ok = devices == {"cuda"} and diff <= TOLERANCE
        failures += not ok
        print(f"{cell} stream: state on {sorted(devices)}, streamed vs native {diff:.2e} {'ok' if ok else 'FAIL'}")

        print(f"{cell} H={H} T={STEPS}: sequences/s")
        print(f"{'batch':>6} {'CUDA':>10} {'native':>10} {'CUDA/native':>12}")
        for batch in (1, 4, 16, 64, 256):
            x = rng.standard_normal((STEPS, batch, H)).astype(np.float32)
            gs, ns = gpu.stream(), native.stream()
            t_gpu = seconds_per_call(lambda: gs.run({"x": x}))
            t_nat = seconds_per_call(lambda: ns.run({"x": x}), repeats=5)
            print(f"{batch:6} {batch / t_gpu:10.0f} {batch / t_nat:10.0f} {t_nat / t_gpu:12.2f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
