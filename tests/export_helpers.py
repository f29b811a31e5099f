"""Shared by tests/test_export_*.py: run a framework's model-building script and the export
CLI in subprocesses (TensorFlow and Paddle segfault in one process; the pytest process
imports neither), then check the written ONNX files here with onnx, onnxruntime and lstmrt."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
CASES = Path(__file__).resolve().parent / "export_cases"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}


def run(args: list, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def cli(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    """The export CLI: `lstmrt export ...` once registered there, else `python -m lstmrt.exporters.cli ...`."""
    try:
        from lstmrt.cli import main
        registered = "export" in getattr(main, "commands", {})
    except ImportError:
        registered = False
    module = "lstmrt.cli" if registered else "lstmrt.exporters.cli"
    return run(["-m", module, *args], timeout=timeout)


def build_and_export(script: str, outdir: Path, extra: tuple = ()) -> dict:
    """Run the model-building script, then export every saved model through the CLI in
    parallel; {name: (path, CompletedProcess of the export)}."""
    built = run([CASES / script, outdir], timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    listing = json.loads((outdir / "models.json").read_text())

    def one(item):
        name, path = item
        return name, (path, cli("export", path, "-o", outdir / f"{name}.onnx", *extra))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        return dict(pool.map(one, listing.items()))


def onnx_path(exported: dict, name: str) -> str:
    """The ONNX file build_and_export wrote for model `name` (beside its saved model)."""
    return exported[name][0].rsplit(".", 1)[0] + ".onnx"


def output_of(proc) -> str:
    return (proc.stdout or "") + (proc.stderr or "")


def check_native_onnx(path: Path, streamable: bool) -> onnx.ModelProto:
    """Native recurrent nodes, layout 0, no Loop/Scan; state metadata when streamable."""
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert "Loop" not in ops and "Scan" not in ops, ops
    recurrent = [n for n in model.graph.node if n.op_type in ("LSTM", "GRU", "RNN")]
    assert recurrent, ops
    for node in recurrent:
        assert all(a.i == 0 for a in node.attribute if a.name == "layout"), node.name
    meta = {p.key: p.value for p in model.metadata_props}
    assert ("lstmrt.state_pairs" in meta) == streamable, meta
    return model


def stream_matches_whole(path: Path, feed: dict, time_axis: dict, chunks=(2, 1, 3)) -> float:
    """lstmrt: a stream over uneven chunks vs one whole run from zero state; max abs diff."""
    import lstmrt
    sess = lstmrt.InferenceSession(str(path), backend="native")
    stream = sess.stream()
    outs = [o.name for o in sess.get_outputs() if o.name not in stream.pairs.values()]
    first = next(iter(time_axis))
    batch = feed[first].shape[1 if time_axis[first] == 0 else 0]
    zero = {n: np.zeros([batch if d is None or isinstance(d, str) else d
                         for d in sess.model.input(n).shape], np.float32) for n in stream.pairs}
    whole = dict(zip(outs, sess.run(outs, {**feed, **zero})))
    steps = next(feed[n].shape[a] for n, a in time_axis.items())
    pieces, start, i = {n: [] for n in outs}, 0, 0
    while start < steps:
        n = min(chunks[i % len(chunks)], steps - start)
        part = {k: np.take(v, range(start, start + n), axis=time_axis[k]) for k, v in feed.items()}
        for name, value in zip(outs, stream.run(part)):
            pieces[name].append(value)
        start, i = start + n, i + 1
    err = 0.0
    for name in outs:
        w = whole[name]
        # time-major outputs join along time (a strided model's are shorter than the input)
        along_time = w.ndim == 3 and sum(p.shape[1] for p in pieces[name]) == w.shape[1]
        got = np.concatenate(pieces[name], axis=1) if along_time else pieces[name][-1]
        err = max(err, float(np.max(np.abs(got - w))))
    return err
