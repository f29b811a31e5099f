"""A Loop with a runtime trip count (a graph input): h = tanh(h @ W + x), carried h [1, H], as
one compiled program (a LOOP instruction running its body in C) against onnxruntime (1 intra-op
thread) and the numpy plan (compiled=False), in one process, interleaved
(lstmrt.bench.time_interleaved); then the same loop with the count a constant (unrolled).

    python benchmarks/bench_loop.py
"""
from __future__ import annotations

import numpy as np
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

import lstmrt
from lstmrt.bench import time_interleaved

F, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def loop_model(H: int, trip: int | None = None) -> bytes:
    """The trip count an input M, or the constant `trip`."""
    W = (np.random.default_rng(0).standard_normal((H, H)) * (0.8 / np.sqrt(H))).astype(np.float32)
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "W"], ["hw"]), helper.make_node("Add", ["hw", "x"], ["p"]),
         helper.make_node("Tanh", ["p"], ["h_out"])], "body",
        [helper.make_tensor_value_info("i", I64, []), helper.make_tensor_value_info("c", BOOL, []),
         helper.make_tensor_value_info("h_in", F, [1, H])],
        [helper.make_tensor_value_info("c", BOOL, []), helper.make_tensor_value_info("h_out", F, [1, H])])
    inputs = [helper.make_tensor_value_info(n, F, [1, H]) for n in ("h0", "x")]
    inits = [numpy_helper.from_array(W, "W")]
    if trip is None:
        inputs.insert(0, helper.make_tensor_value_info("M", I64, []))
    else:
        inits.append(numpy_helper.from_array(np.array(trip, np.int64), "M"))
    graph = helper.make_graph([helper.make_node("Loop", ["M", "", "h0"], ["h"], body=body)], "loop", inputs,
                              [helper.make_tensor_value_info("h", F, [1, H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def main() -> None:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    print("| H | trip | lstmrt (us) | onnxruntime (us) | numpy plan (us) | vs ort | vs numpy | unrolled (us) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for H in (32, 128):
        data = loop_model(H)
        native = lstmrt.InferenceSession(data, backend="native")
        assert "in one C call" in native.backend_reason, native.backend_reason
        reference = lstmrt.InferenceSession(data, backend="native", compiled=False)
        ort = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        for trip in (1, 32):
            unrolled = lstmrt.InferenceSession(loop_model(H, trip), backend="native")
            rng = np.random.default_rng(1)
            feed = {"M": np.array(trip, np.int64), "h0": rng.standard_normal((1, H)).astype(np.float32),
                    "x": rng.standard_normal((1, H)).astype(np.float32)}
            fixed = {k: v for k, v in feed.items() if k != "M"}
            np.testing.assert_allclose(native.run(None, feed)[0], ort.run(None, feed)[0], rtol=1e-4, atol=1e-5)
            times = time_interleaved([lambda: native.run(None, feed), lambda: ort.run(None, feed),
                                      lambda: reference.run(None, feed), lambda: unrolled.run(None, fixed)], 2.0)
            us = [t * 1e6 for t in times]
            print(f"| {H} | {trip} | {us[0]:.1f} | {us[1]:.1f} | {us[2]:.1f} | {us[1] / us[0]:.2f}x | "
                  f"{us[2] / us[0]:.1f}x | {us[3]:.1f} |")


if __name__ == "__main__":
    main()
