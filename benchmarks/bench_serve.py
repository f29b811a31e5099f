"""`lstmrt serve` against the deployment a user would otherwise write, both on tritonserver.

  lstmrt   `lstmrt serve`: sequence batcher (Oldest), the state kept on the server, every live
           sequence's chunk stepped by one stream-group call per execution
  naive    a Python-backend model that runs onnxruntime (1 thread) on each request alone, the
           state (h, c) sent by the client with every chunk and returned with the outputs

Both: one model instance, gRPC on localhost, the same Triton binary.  N concurrent sequences
(1, 16, 64), each a closed loop (send a chunk of --chunk steps, wait for the answer, send the
next) on one asyncio client; each case runs --seconds after a warm-up.  Reported: chunks/s over
all sequences (each chunk is --chunk steps of one stream), the p50/p99 latency of a chunk
as the client sees it, and (lstmrt) the chunks stepped per stream-group call, from the
model's metrics.  Before timing, one streamed sequence of each deployment is checked
against a whole-sequence lstmrt run (1e-4).

    python benchmarks/bench_serve.py [--seconds 6] [--chunk 16] [--streams 1 16 64] [--queue-delay-us 0]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import lstmrt
from lstmrt.serve import ServeOptions, Server, served_interface
from lstmrt.state_pairs import time_axes

ROOT = Path(__file__).resolve().parents[1]

NAIVE_MODEL_PY = '''\
import json, os
import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb


class TritonPythonModel:
    def initialize(self, args):
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.sess.get_inputs()]
        self.outputs = [o.name for o in self.sess.get_outputs()]

    def execute(self, requests):
        responses = []
        for r in requests:
            feed = {n: pb.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs}
            out = self.sess.run(None, feed)
            responses.append(pb.InferenceResponse([pb.Tensor(n, v) for n, v in zip(self.outputs, out)]))
        return responses
'''


def bare_lstm(hidden: int = 256, inputs: int = 64) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.uniform(-0.1, 0.1, s).astype(np.float32), n) for n, s in
             (("W", (1, 4 * hidden, inputs)), ("R", (1, 4 * hidden, hidden)), ("B", (1, 8 * hidden)))]
    node = helper.make_node("LSTM", ["X", "W", "R", "B", "", "h0", "c0"], ["Y", "hn", "cn"], hidden_size=hidden)
    st = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "B", hidden])  # noqa: E731
    graph = helper.make_graph([node], "bare_lstm",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", inputs]),
                               st("h0"), st("c0")],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", 1, "B", hidden]),
                               st("hn"), st("cn")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def naive_repository(model_path: Path, name: str, root: Path) -> Path:
    sess = lstmrt.InferenceSession(str(model_path), backend="onnxruntime")
    types = {"float32": "TYPE_FP32"}

    def tensors(kind, infos):
        rows = [f'  {{ name: "{t.name}" data_type: {types[np.dtype(t.dtype).name]} dims: [ '
                + ", ".join(str(d) if isinstance(d, int) and d > 0 else "-1" for d in t.shape) + " ] }"
                for t in infos]
        return f"{kind} [\n" + ",\n".join(rows) + "\n]\n"
    version = root / name / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(model_path.read_bytes())
    (version / "model.py").write_text(NAIVE_MODEL_PY)
    (root / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n' + tensors("input", sess.get_inputs())
        + tensors("output", sess.get_outputs()) + "instance_group [ { count: 1 kind: KIND_CPU } ]\n")
    return root


class Case:
    """One model: its served interface, a chunk maker, and both deployments' request makers."""

    def __init__(self, label: str, path: Path, chunk: int):
        self.label, self.path, self.chunk = label, path, chunk
        self.sess = lstmrt.InferenceSession(str(path))
        self.iface = served_interface(self.sess)
        self.pairs = self.iface.state_pairs
        self.rng = np.random.default_rng(1)

    def chunk_feed(self) -> dict:
        """Random non-state inputs for one chunk, model layout, batch 1."""
        feed = {}
        for t in self.iface.inputs:
            dims = [d if d > 0 else self.chunk for d in t.dims]
            dims.insert(t.batch_axis, 1)
            feed[t.name] = self.rng.standard_normal(dims).astype(t.dtype)
        return feed

    def zero_state(self) -> dict:
        stream = self.sess.stream()
        stream.run(self.chunk_feed())
        return {n: np.zeros_like(v) for n, v in stream.state.items()}


def infer_input(module, name, value):
    t = module.InferInput(name, list(value.shape), "FP32")
    t.set_data_from_numpy(np.ascontiguousarray(value))
    return t


async def lstmrt_sequence(module, conn, case, name, seq_id, feeds, latencies, stop_at):
    outs, first = [], True
    for feed in feeds:
        if stop_at is not None and time.perf_counter() > stop_at:
            break
        inputs = [infer_input(module, t.name, t.to_served(feed[t.name])) for t in case.iface.inputs]
        t0 = time.perf_counter()
        r = await conn.infer(name, inputs, sequence_id=seq_id, sequence_start=first)
        latencies.append(time.perf_counter() - t0)
        first = False
        outs.append([t.to_model(r.as_numpy(t.name)) for t in case.iface.outputs])
    await conn.infer(name, [], sequence_id=seq_id, sequence_end=True, outputs=[])
    return outs


async def naive_sequence(module, conn, case, name, seq_id, feeds, latencies, stop_at):
    outs, state = [], case.zero_state()
    names = [o.name for o in case.sess.get_outputs()]
    for feed in feeds:
        if stop_at is not None and time.perf_counter() > stop_at:
            break
        inputs = [infer_input(module, n, v) for n, v in {**feed, **state}.items()]
        t0 = time.perf_counter()
        r = await conn.infer(name, inputs)
        latencies.append(time.perf_counter() - t0)
        result = {n: r.as_numpy(n) for n in names}
        state = {i: result[o] for i, o in case.pairs.items()}
        outs.append([result[t.name] for t in case.iface.outputs])
    return outs


async def check(kind, port, case, name):
    import tritonclient.grpc.aio as module
    conn = module.InferenceServerClient(f"localhost:{port}")
    feeds = [case.chunk_feed() for _ in range(5)]
    run = lstmrt_sequence if kind == "lstmrt" else naive_sequence
    outs = await run(module, conn, case, name, 99, feeds, [], None)
    await conn.close()
    axes = time_axes(case.sess.model)
    whole = {n: np.concatenate([f[n] for f in feeds], axis=axes[n]) for n in feeds[0]}
    state = case.zero_state()
    want = case.sess.run([t.name for t in case.iface.outputs], {**whole, **state})
    got = [np.concatenate([o[i] for o in outs], axis=want[i].shape.index(5 * case.chunk))
           for i in range(len(want))]
    err = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
    assert err < 1e-4, f"{kind} {case.label}: streamed differs from a whole run by {err}"


async def load(kind, port, case, name, streams, seconds):
    import tritonclient.grpc.aio as module
    conn = module.InferenceServerClient(f"localhost:{port}")
    run = lstmrt_sequence if kind == "lstmrt" else naive_sequence
    feeds = [case.chunk_feed() for _ in range(8)]
    many = feeds * 100000
    warm = []
    await asyncio.gather(*[run(module, conn, case, name, 1000 + s, feeds[:2], warm, None) for s in range(streams)])
    latencies = []
    t0 = time.perf_counter()
    await asyncio.gather(*[run(module, conn, case, name, 2000 + s, many, latencies, t0 + seconds)
                           for s in range(streams)])
    wall = time.perf_counter() - t0
    await conn.close()
    lat = np.array(latencies) * 1e3
    return len(lat) / wall, np.percentile(lat, 50), np.percentile(lat, 99)


def group_counts(server) -> tuple:
    """(group calls, chunks stepped) so far, from the model's metrics (published every 0.2 s)."""
    time.sleep(0.5)
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    total = {}
    for line in text.splitlines():
        for name in ("lstmrt_group_steps_total", "lstmrt_group_chunks_total"):
            if line.startswith(name + "{"):
                total[name] = total.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return total.get("lstmrt_group_steps_total", 0.0), total.get("lstmrt_group_chunks_total", 0.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--queue-delay-us", type=int, default=0, help="lstmrt serve's --queue-delay-us")
    ap.add_argument("--only", choices=["lstmrt", "naive"], help="time one deployment only")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    bare = work / "bare_lstm_h256.onnx"
    onnx.save(bare_lstm(), str(bare))
    cases = [Case("bracket_depth (H=32)", ROOT / "examples" / "bracket_depth.onnx", args.chunk),
             Case("bare LSTM H=256, I=64", bare, args.chunk)]
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, lstmrt backend {cases[0].sess.backend}; "
          f"chunk {args.chunk} steps; client and server on one machine")
    print(f"{'model':24s} {'deployment':10s} {'streams':>7s} {'chunks/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} "
          f"{'per call':>8s}")
    for i, case in enumerate(cases):
        name = f"m{i}"
        naive_root = naive_repository(case.path, name, work / f"naive{i}")
        servers = {"lstmrt": Server(case.path, ServeOptions(name, max_batch=64, queue_delay_us=args.queue_delay_us),
                                    address="127.0.0.1",
                                    log=str(work / f"lstmrt{i}.log")),
                   "naive": Server(None, ServeOptions(name), repository=naive_root, address="127.0.0.1",
                                   log=str(work / f"naive{i}.log"))}
        for kind, server in servers.items():
            if args.only and kind != args.only:
                continue
            with server:
                asyncio.run(check(kind, server.grpc_port, case, name))
                for n in args.streams:
                    before = group_counts(server) if kind == "lstmrt" else None
                    rate, p50, p99 = asyncio.run(load(kind, server.grpc_port, case, name, n, args.seconds))
                    per_call = "1"
                    if before is not None:
                        steps, chunks = (a - b for a, b in zip(group_counts(server), before))
                        per_call = f"{chunks / max(steps, 1):.1f}"
                    print(f"{case.label:24s} {kind:10s} {n:7d} {rate:9.0f} {p50:8.2f} {p99:8.2f} {per_call:>8s}",
                          flush=True)


if __name__ == "__main__":
    main()
