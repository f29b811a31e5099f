"""Side-by-side: lstmrt's native kernel vs onnxruntime (1 intra-op thread), one process.

Each model is first checked numerically against onnxruntime, then timed on the call
paths of lstmrt and on onnxruntime.  Prints microseconds per call and the speed ratios:
  run     sess.run, state passed in
  stream  stream.run, state carried (a bare recurrent model takes the streaming hot path)
  runner  CellWeights.runner().step(x): x copied in, one C call on prebuilt buffers, state carried
          (the kernel plus the least Python a call can have: the floor under stream.run)
  bf16/int8  stream.run on sessions with precision="bf16" / "int8" (opt-in)
  2thr    sess.run on a session with threads=2 and its speed-up over run: a batch splits its rows,
          a single stream runs as a team splitting the hidden units (csrc/lstmrt.c), on the
          kernel's thread pool; calls too short to gain run on one thread
Then a stream group of 64 live streams against stepping the same 64 streams one by one.
Within a workload the runners take turns, five rounds of equal windows each, and each keeps its
quickest window (lstmrt.bench.time_interleaved): a slow spell of a shared machine then falls on
all of them, not on whichever was being timed.
GFLOP/s and "%sgemm" are for the f32 runner against the single-core sgemm rate measured
here with numpy.matmul (OpenBLAS, OPENBLAS_NUM_THREADS=1) on a 2048x256 @ 256x1024 product,
the shape of the batch workload's input projection.

    python benchmarks/bench_native_vs_ort.py [--quick]
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # before numpy loads OpenBLAS

import argparse  # noqa: E402
import itertools  # noqa: E402
import platform  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import lstmrt
from lstmrt.bench import cpu_flags, time_interleaved, time_per_call
from lstmrt.kernel import Activation, CellSpec, CellWeights

WORKLOADS = [  # (label, hidden, batch, steps)
    ("stream", 64, 1, 1), ("stream", 256, 1, 1), ("stream", 512, 1, 1),
    ("chunk", 256, 1, 16), ("chunk", 512, 1, 16), ("batch", 256, 64, 32),
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
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    proto.ir_version = 8   # what every onnxruntime this script may meet can read
    return proto


def sgemm_gflops(budget_s: float) -> float:
    rng = np.random.default_rng(0)
    a, b = rng.random((2048, 256), np.float32), rng.random((256, 1024), np.float32)
    out = np.empty((2048, 1024), np.float32)
    t = time_per_call(lambda: np.matmul(a, b, out=out), budget_s)
    return 2 * 2048 * 256 * 1024 / t / 1e9


def cell_weights(proto, cell: str, precision: str) -> CellWeights:
    """The model's one direction packed straight from its initializers (no session internals)."""
    init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    W, R, B = init["W"][0], init["R"][0], init["B"][0]
    H = R.shape[1]
    acts = ("sigmoid", "tanh", "tanh") if cell == "LSTM" else ("sigmoid", "tanh")
    spec = CellSpec(cell, W.shape[1], H, tuple(Activation(a) for a in acts), linear_before_reset=cell == "GRU")
    return CellWeights(spec, precision=precision).pack(W, R, B)


def runner_call(proto, cell, feed, precision, ref_out, threads=1):
    """(the runner path's call, max |diff| vs onnxruntime on the first call)."""
    X = feed["X"]
    T, B, _ = X.shape
    r = cell_weights(proto, cell, precision).runner(B, T, threads=threads)
    np.copyto(r.x, X)
    np.copyto(r.h, feed["h0"][0])
    if r.c is not None:
        np.copyto(r.c, feed["c0"][0])
    r.run()
    diff = max(np.abs(r.y - ref_out[0][:, 0]).max(), np.abs(r.h - ref_out[1][0]).max())
    return (lambda: r.step(X)), diff


def stream_call(proto, x: dict, **native):
    stream = lstmrt.InferenceSession(proto, backend="native", **native).stream()
    return lambda: stream.run(x)


def group_throughput(budget: float, members: int = 64) -> None:
    """A server's view: `members` live B=1 streams stepped one T=1 call at a time; `half` steps
    a different half of them each round (a serving batch holds the sequences that sent a chunk)."""
    print(f"\n# stream group: {members} live streams, one step each per round")
    print(f"{'cell':5} {'H':>4} {'alone us/round':>15} {'group us/round':>15} {'group x':>8} {'half us/round':>14}")
    rng = np.random.default_rng(2)
    for cell, hidden in itertools.product(("LSTM", "GRU"), (64, 256, 512)):
        sess = lstmrt.InferenceSession(model(cell, hidden), backend="native")
        xs = [rng.standard_normal((1, 1, hidden)).astype(np.float32) for _ in range(members)]
        streams = [sess.stream() for _ in range(members)]
        group = sess.stream_group()
        keys = [group.add() for _ in range(members)]
        feeds = {k: {"X": x} for k, x in zip(keys, xs)}
        got = group.run(feeds)
        for k, x, s in zip(keys, xs, streams):
            assert np.abs(got[k][0] - s.run({"X": x})[0]).max() < 1e-5
        halves = [{k: feeds[k] for k in rng.permutation(keys)[:members // 2]} for _ in range(8)]
        turn = itertools.cycle(halves)
        t_alone, t_group, t_half = (t * 1e6 for t in time_interleaved(
            [lambda: [s.run({"X": x}) for s, x in zip(streams, xs)], lambda: group.run(feeds),
             lambda: group.run(next(turn))], budget))
        print(f"{cell:5} {hidden:4} {t_alone:15.1f} {t_group:15.1f} {t_alone / t_group:8.2f} {t_half:14.1f}",
              flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter timing per case")
    ap.add_argument("--group", action="store_true", help="only the stream-group table")
    args = ap.parse_args()
    budget = 0.3 if args.quick else 1.5
    if args.group:
        return group_throughput(budget)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    sgemm = sgemm_gflops(budget)
    print(f"# {platform.processor() or platform.machine()}, lstmrt SIMD paths: {lstmrt.available_simd_paths()}, "
          f"onnxruntime {ort.__version__}")
    print(f"# CPU flags: {' '.join(cpu_flags())}")
    print(f"# single-core sgemm (numpy.matmul, OpenBLAS 1 thread, 2048x256x1024): {sgemm:.1f} GFLOP/s")
    print(f"{'cell':5} {'workload':8} {'H':>4} {'B':>3} {'T':>3} {'ort us':>8} {'run us':>8} {'strm us':>8} "
          f"{'rnr us':>8} {'run x':>6} {'strm x':>6} {'rnr x':>6} {'GFLOP/s':>7} {'%sgemm':>6} "
          f"{'bf16 us':>8} {'bf16 x':>6} {'int8 us':>8} {'int8 x':>6} {'2thr us':>8} {'2thr/1':>6}")
    for cell in ("LSTM", "GRU"):
        for label, H, B, T in WORKLOADS:
            proto = model(cell, H)
            ref = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
            sess = lstmrt.InferenceSession(proto, backend="native")
            rng = np.random.default_rng(1)
            feed = {i.name: rng.standard_normal([{"T": T, "B": B}.get(d, d) for d in i.shape]).astype(np.float32)
                    for i in ref.get_inputs()}
            ref_out = ref.run(None, feed)
            diff = max(np.abs(a - b).max() for a, b in zip(sess.run(None, feed), ref_out))
            assert diff < 1e-4, f"{cell} H={H}: native differs from onnxruntime by {diff}"
            stream = sess.stream()
            x = {"X": feed["X"]}
            rnr, d = runner_call(proto, cell, feed, "f32", ref_out)
            assert d < 1e-4, f"{cell} H={H}: runner differs from onnxruntime by {d}"
            calls = {"ort": lambda: ref.run(None, feed), "run": lambda: sess.run(None, feed),
                     "strm": lambda: stream.run(x), "rnr": rnr,
                     # reduced precision and threads through the public API: stream.run / sess.run
                     "bf16": stream_call(proto, x, precision="bf16"), "int8": stream_call(proto, x, precision="int8")}
            sess2 = lstmrt.InferenceSession(proto, backend="native", threads=2)   # rows, or a team on units
            assert max(np.abs(a - b).max() for a, b in zip(sess2.run(None, feed), ref_out)) < 1e-4
            calls["2thr"] = lambda: sess2.run(None, feed)
            us = {k: t * 1e6 for k, t in zip(calls, time_interleaved(list(calls.values()), budget))}
            t_ort, t_run, t_stream, t_rnr, t_bf16, t_int8 = (us[k] for k in ("ort", "run", "strm", "rnr", "bf16", "int8"))
            two = f"{us['2thr']:8.1f} {t_run / us['2thr']:6.2f}"
            flops = 2 * GATES[cell] * H * (H + H) * B * T
            gf = flops / t_rnr / 1e3
            print(f"{cell:5} {label:8} {H:4} {B:3} {T:3} {t_ort:8.1f} {t_run:8.1f} {t_stream:8.1f} {t_rnr:8.1f} "
                  f"{t_ort / t_run:6.2f} {t_ort / t_stream:6.2f} {t_ort / t_rnr:6.2f} {gf:7.1f} {100 * gf / sgemm:6.0f} "
                  f"{t_bf16:8.1f} {t_ort / t_bf16:6.2f} {t_int8:8.1f} {t_ort / t_int8:6.2f} {two}", flush=True)
    group_throughput(budget)


if __name__ == "__main__":
    main()
