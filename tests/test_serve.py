"""lstmrt serve: Triton's sequence batcher in front of one stream group per model instance.

The oracle is lstmrt's own whole-sequence `sess.run` from zero state (itself checked against
onnxruntime elsewhere).  The LiveSequences tests need no server and run by default; the rest
start real `tritonserver` processes on free localhost ports and are marked `serve`
(pip install -e '.[serve,test]'; python -m pytest -m serve).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

import lstmrt
from lstmrt.cli import main as cli
from lstmrt.errors import InputError, StreamError
from lstmrt.serve.sequences import Chunk, LiveSequences
from tests.models import bare_cell

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "bracket_depth.onnx"
TEXT = np.load(ROOT / "examples" / "bracket_depth_input.npy")    # [1, 173, 61] one-hot characters
NAME = "bracket_depth"


def texts(count: int) -> list:
    """Distinct one-hot texts of uneven lengths, rotations of the shipped example's."""
    return [np.ascontiguousarray(np.roll(TEXT, 11 * k, axis=1)[:, :90 + 5 * k]) for k in range(count)]


def whole_run(sess, x) -> np.ndarray:
    zeros = np.zeros((1, 1, 32), np.float32)
    return sess.run(["y"], {"x": x, "h0": zeros, "c0": zeros})[0]


def chunked(x, rng, sizes=(3, 5, 8, 13)) -> list:
    out, t = [], 0
    while t < x.shape[1]:
        n = int(rng.choice(sizes))
        out.append(x[:, t:t + n])
        t += n
    return out


@pytest.fixture(scope="module")
def sess():
    return lstmrt.InferenceSession(str(EXAMPLE))


# -- the sequence table alone (no server) ------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize("backend", ["native", "onnxruntime"])
def test_live_sequences_step_fails_a_bad_chunk_alone(sess, backend):
    live = LiveSequences(lstmrt.InferenceSession(str(EXAMPLE), backend=backend), idle_timeout_s=10)
    a, b = texts(2)
    first = live.step([Chunk(1, True, False, {"x": a[:, :5]}), Chunk(2, True, False, {"x": b[:, :5]})])
    bad = {"x": a[:, :5, :60]}
    second = live.step([Chunk(1, False, False, {"x": a[:, 5:9]}), Chunk(2, False, False, bad),
                        Chunk(3, False, False, {"x": a[:, :5]}), Chunk(2, False, False, {"x": b[:, 5:0]})])
    assert isinstance(second[1], InputError) and "'x'" in str(second[1])
    assert isinstance(second[2], StreamError) and "START" in str(second[2])      # never started
    assert isinstance(second[3], InputError) and "at least one step" in str(second[3])
    third = live.step([Chunk(2, False, True, {"x": b[:, 5:12]}), Chunk(1, False, True, {"x": a[:, 9:12]})])
    got_a = np.concatenate([first[0][0], second[0][0], third[1][0]], axis=1)
    got_b = np.concatenate([first[1][0], third[0][0]], axis=1)       # the failed chunks left b's state alone
    np.testing.assert_allclose(got_a, whole_run(sess, a[:, :12]), atol=1e-5)
    np.testing.assert_allclose(got_b, whole_run(sess, b[:, :12]), atol=1e-5)
    assert live.stats()["live"] == 0 and live.stats()["freed_end"] == 2


def test_live_sequences_run_one_sequence_twice_in_order_and_free_idle(sess):
    clock = FakeClock()
    live = LiveSequences(sess, idle_timeout_s=5, clock=clock)
    (a,) = texts(1)
    outs = live.step([Chunk(7, True, False, {"x": a[:, :4]}), Chunk(7, False, False, {"x": a[:, 4:10]}),
                      Chunk(8, True, False, {"x": a[:, :4]})])
    np.testing.assert_allclose(np.concatenate([outs[0][0], outs[1][0]], 1), whole_run(sess, a[:, :10]), atol=1e-5)
    np.testing.assert_allclose(outs[2][0], whole_run(sess, a[:, :4]), atol=1e-5)
    clock.now = 4.0
    live.step([Chunk(8, False, False, {"x": a[:, 4:6]})])
    clock.now = 6.0
    assert live.sweep() == 1                      # 7 was silent for 6 s; 8 for 2 s
    assert live.stats()["live"] == 1 and live.stats()["freed_idle"] == 1
    (late,) = live.step([Chunk(7, False, False, {"x": a[:, 10:12]})])
    assert isinstance(late, StreamError) and "idle" in str(late)


# -- real servers ------------------------------------------------------------------------------
def _cmdline(pid: str) -> list:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def server_processes(grpc_port: int) -> set:
    """Pids of the tritonserver listening on this gRPC port and of its Python-backend stubs
    (a stub's command line names its server's pid)."""
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    servers = {p for p in pids if f"--grpc-port={grpc_port}" in _cmdline(p)}
    stubs = {p for p in pids if servers & set(_cmdline(p)[1:])
             and _cmdline(p)[0].endswith("triton_python_backend_stub")}
    return {int(p) for p in servers | stubs}


def alive(pids) -> list:
    """Those of `pids` still running (zombies count as gone)."""
    running = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    running.append(pid)
        except OSError:
            pass
    return running


def metric(url: str, name: str, **labels) -> float:
    """Sum of a Prometheus metric over the series whose labels include `labels`."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return total


def settled(url: str, name: str, **labels) -> float:
    """The metric once the model has published its latest counts (every 0.2 s)."""
    last = metric(url, name, **labels)
    for _ in range(25):
        time.sleep(0.3)
        now = metric(url, name, **labels)
        if now == last:
            return now
        last = now
    return last


def wait_ready(http_port: int, name: str, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/{name}/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError("lstmrt serve did not get ready")


@pytest.fixture(scope="module")
def cli_server():
    """`lstmrt serve` on the shipped example, as a user runs it; stopped with Ctrl-C (SIGINT)."""
    from lstmrt.serve.server import free_port
    ports = {k: free_port() for k in ("http", "grpc", "metrics")}
    proc = subprocess.Popen([sys.executable, "-m", "lstmrt.cli", "serve", str(EXAMPLE), "--http-port",
                             str(ports["http"]), "--grpc-port", str(ports["grpc"]), "--metrics-port",
                             str(ports["metrics"]), "--address", "127.0.0.1", "--idle-timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    family = set()
    try:
        wait_ready(ports["http"], NAME, proc)
        family = server_processes(ports["grpc"])
        assert len(family) == 2          # tritonserver and one stub
        yield ports
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert f"grpc     localhost:{ports['grpc']}\n" in out and "stopped (tritonserver exit status 0)" in out
    assert alive(family) == []


@pytest.mark.serve
def test_serve_stops_cleanly_on_sigterm(tmp_path):
    from lstmrt.serve.server import free_port
    ports = [free_port() for _ in range(3)]
    proc = subprocess.Popen([sys.executable, "-m", "lstmrt.cli", "serve", str(EXAMPLE), "--name", "bd",
                             "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port",
                             str(ports[2]), "--address", "127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    family = set()
    try:
        wait_ready(ports[0], "bd", proc)
        family = server_processes(ports[1])
        assert len(family) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopped (tritonserver exit status 0)" in out, out
    assert alive(family) == []


def start_server(model, name, idle_timeout, tmp, instances=1):
    from lstmrt.serve import ServeOptions, Server
    return Server(model, ServeOptions(name, idle_timeout=idle_timeout, instances=instances), address="127.0.0.1",
                  log=str(tmp / f"{name}-{idle_timeout}.log")).start()


@pytest.fixture(scope="module")
def second_server(tmp_path_factory):
    """A second server on the example, with two model instances (a sequence stays on one)."""
    server = start_server(EXAMPLE, NAME, 60, tmp_path_factory.mktemp("second"), instances=2)
    family = server_processes(server.grpc_port)
    assert len(family) == 3              # tritonserver and a stub per instance
    yield server
    server.stop()
    assert alive(family) == []


@pytest.fixture(scope="module")
def bare_lstm(tmp_path_factory):
    """A bare LSTM (X [T, B, I], Y [T, 1, B, H]: batch not leading) with a 2 s idle timeout, its
    repository written by `lstmrt serve --repository` and served as a user's own tritonserver would."""
    from lstmrt.serve import ServeOptions, Server
    path = tmp_path_factory.mktemp("bare") / "bare_lstm.onnx"
    onnx.save(bare_cell("LSTM", hidden=24, inputs=10), str(path))
    written = CliRunner().invoke(cli, ["serve", str(path), "--repository", str(path.parent / "repo"),
                                       "--idle-timeout", "2"])
    assert written.exit_code == 0, written.output
    server = Server(None, ServeOptions("bare_lstm"), repository=path.parent / "repo", address="127.0.0.1",
                    log=str(path.parent / "bare.log")).start()
    family = server_processes(server.grpc_port)
    yield server, lstmrt.InferenceSession(str(path))
    server.stop()
    assert family and alive(family) == []


def grpc(port):
    import tritonclient.grpc as g
    return g, g.InferenceServerClient(f"localhost:{port}")


def raw_infer(port, seq, x, start=False, end=False, model=NAME):
    """One request as any tritonclient user would send it: [1, T, 61] for the example."""
    g, conn = grpc(port)
    inputs = []
    if x is not None:
        inputs = [g.InferInput("x", list(x.shape), "FP32")]
        inputs[0].set_data_from_numpy(np.ascontiguousarray(x, np.float32))
    result = conn.infer(model, inputs, sequence_id=seq, sequence_start=start, sequence_end=end,
                        outputs=None if x is not None else [])
    return result.as_numpy("y") if x is not None else None


@pytest.mark.serve
def test_sixteen_interleaved_sequences_equal_whole_runs(cli_server, sess):
    from lstmrt.serve import Client
    client = Client(f"localhost:{cli_server['grpc']}")
    steps0 = settled(f"http://localhost:{cli_server['metrics']}/metrics", "lstmrt_group_steps_total")
    chunks0 = settled(f"http://localhost:{cli_server['metrics']}/metrics", "lstmrt_group_chunks_total")
    seqs, results, errors = texts(16), {}, []
    barrier = threading.Barrier(16)

    def one(k):
        try:
            rng = np.random.default_rng(k)
            barrier.wait()
            with client.stream(NAME) as s:
                results[k] = np.concatenate([s.run({"x": c})[0] for c in chunked(seqs[k], rng)], axis=1)
        except Exception as e:      # noqa: BLE001 -- reported below, with the thread's sequence
            errors.append((k, e))

    threads = [threading.Thread(target=one, args=(k,)) for k in range(16)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []
    for k, x in enumerate(seqs):
        np.testing.assert_allclose(results[k], whole_run(sess, x), atol=1e-5, err_msg=f"sequence {k}")
    metrics = f"http://localhost:{cli_server['metrics']}/metrics"
    steps = settled(metrics, "lstmrt_group_steps_total") - steps0
    chunks = settled(metrics, "lstmrt_group_chunks_total") - chunks0
    assert chunks == sum(len(chunked(x, np.random.default_rng(k))) for k, x in enumerate(seqs))
    assert steps < chunks            # some group calls stepped several sequences at once
    assert metric(metrics, "lstmrt_live_sequences") == 0     # every stream's close() freed it


@pytest.mark.serve
def test_start_mid_sequence_resets_and_end_then_reuse_starts_fresh(cli_server, sess):
    port = cli_server["grpc"]
    a, b = texts(2)
    raw_infer(port, 4242, a[:, :20], start=True)
    cont = raw_infer(port, 4242, a[:, 20:30])
    np.testing.assert_allclose(cont, whole_run(sess, a[:, :30])[:, 20:], atol=1e-5)
    restarted = raw_infer(port, 4242, b[:, :15], start=True)           # START again: fresh state
    np.testing.assert_allclose(restarted, whole_run(sess, b[:, :15]), atol=1e-5)
    raw_infer(port, 4242, b[:, 15:25], end=True)
    import tritonclient.utils as tu
    with pytest.raises(tu.InferenceServerException, match="START"):      # ended: unknown without START
        raw_infer(port, 4242, b[:, 25:30])
    fresh = raw_infer(port, 4242, b[:, 25:40], start=True)
    np.testing.assert_allclose(fresh, whole_run(sess, b[:, 25:40]), atol=1e-5)
    raw_infer(port, 4242, None, end=True)                                  # END without data frees it
    from lstmrt.serve import Client
    with Client(f"localhost:{port}").stream(NAME) as stream:               # the same through Client
        stream.run({"x": a[:, :20]})
        stream.reset()
        np.testing.assert_allclose(stream.run({"x": b[:, :15]})[0], whole_run(sess, b[:, :15]), atol=1e-5)


@pytest.mark.serve
def test_malformed_requests_fail_alone(cli_server, sess):
    import tritonclient.utils as tu
    port = cli_server["grpc"]
    a, b = texts(2)
    g, conn = grpc(port)
    good = raw_infer(port, 77, a[:, :10], start=True)
    raw_infer(port, 78, b[:, :10], start=True)
    cases = [(b[:, 10:14, :60], "input 'x' for model 'bracket_depth'. Expected [-1,-1,61]"),  # Triton's check
             (np.concatenate([b[:, 10:14]] * 2), "batch-size 1"),   # two sequences in one request
             (b[:, 10:10], "input 'x' has shape [1, 0, 61]: a chunk needs at least one step")]   # ours
    collected = []

    def callback(result, error):
        collected.append((result, error))

    # each round, a bad request travels beside a good one; a sequence's own requests go in order
    for i, (bad, _) in enumerate(cases):
        inp = g.InferInput("x", list(bad.shape), "FP32")
        inp.set_data_from_numpy(np.ascontiguousarray(bad))
        conn.async_infer(NAME, [inp], callback, sequence_id=78)
        ok = g.InferInput("x", [1, 3, 61], "FP32")
        ok.set_data_from_numpy(np.ascontiguousarray(a[:, 10 + 3 * i:13 + 3 * i]))
        conn.async_infer(NAME, [ok], callback, sequence_id=77)
        deadline = time.monotonic() + 30
        while len(collected) < 2 * (i + 1):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    errors = [str(e) for _, e in collected if e is not None]
    assert len(errors) == len(cases)
    for _, words in cases:
        assert any(words in m for m in errors), (words, errors)
    assert sum(e is None for _, e in collected) == len(cases)
    # sequence 77 went on unharmed; 78's state was untouched by its failed requests
    tail = raw_infer(port, 77, a[:, 10 + 3 * len(cases):30], end=True)
    np.testing.assert_allclose(tail, whole_run(sess, a[:, :30])[:, 10 + 3 * len(cases):], atol=1e-5)
    after = raw_infer(port, 78, b[:, 10:20], end=True)
    np.testing.assert_allclose(after, whole_run(sess, b[:, :20])[:, 10:], atol=1e-5)
    with pytest.raises(tu.InferenceServerException, match=r"without inputs \['x'\] must carry the END flag"):
        conn.infer(NAME, [], sequence_id=79, sequence_start=True)         # no data and no END
    raw_infer(port, 79, None, end=True)
    assert good.shape == (1, 10, 10)


@pytest.mark.serve
def test_idle_sequence_is_freed_after_the_timeout(bare_lstm):
    server, bare = bare_lstm
    from lstmrt.serve import Client
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 1, 10)).astype(np.float32)        # [T, B=1, I]: the model's own layout
    zeros = np.zeros((1, 1, 24), np.float32)
    want = bare.run(["Y"], {"X": x, "h0": zeros, "c0": zeros})[0]
    stream = Client(server.grpc_url).stream("bare_lstm")
    got = np.concatenate([stream.run({"X": x[:4]})[0], stream.run({"X": x[4:]})[0]], axis=0)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got.shape == (9, 1, 1, 24)
    assert settled(server.metrics_url, "lstmrt_live_sequences") == 1
    freed_before = settled(server.metrics_url, "lstmrt_sequences_freed_total", reason="idle")
    left = time.monotonic()
    while metric(server.metrics_url, "lstmrt_sequences_freed_total", reason="idle") == freed_before:
        assert time.monotonic() - left < 15, "the idle sequence was never freed"
        time.sleep(0.2)
    assert time.monotonic() - left > 1.0          # not before the 2 s timeout (less our settling)
    assert metric(server.metrics_url, "lstmrt_live_sequences") == 0
    with pytest.raises(lstmrt.LstmrtError, match="START"):          # Triton forgot it as well
        stream.run({"X": x[:1]})


@pytest.mark.serve
def test_two_servers_one_client_spread_and_exact(cli_server, second_server, sess):
    from lstmrt.serve import Client, server_index
    urls = [f"localhost:{cli_server['grpc']}", second_server.http_url]      # gRPC and HTTP
    client = Client(urls)
    ids = list(range(1000, 1016))
    placement = [server_index(i, 2) for i in ids]
    assert set(placement) == {0, 1}
    metrics = [f"http://localhost:{cli_server['metrics']}/metrics", second_server.metrics_url]
    before = [settled(m, "lstmrt_sequences_started_total") for m in metrics]
    seqs, results = texts(16), {}

    def one(k):
        with client.stream(NAME, sequence_id=ids[k]) as s:
            assert s.url == urls[placement[k]]
            results[k] = np.concatenate([s.run({"x": c})[0] for c in chunked(seqs[k], np.random.default_rng(k))], 1)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(16)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for k, x in enumerate(seqs):
        np.testing.assert_allclose(results[k], whole_run(sess, x), atol=1e-5, err_msg=f"sequence {k}")
    started = [settled(m, "lstmrt_sequences_started_total") - b for m, b in zip(metrics, before)]
    assert started == [placement.count(0), placement.count(1)]


def unstreamable_model() -> onnx.ModelProto:
    """An LSTM whose initial state is a constant, not an input: nothing for a stream to carry."""
    model = bare_cell("LSTM", hidden=8, inputs=4)
    graph = model.graph
    for name in ("h0", "c0"):
        graph.input.remove(next(i for i in graph.input if i.name == name))
        graph.initializer.append(numpy_helper.from_array(np.zeros((1, 1, 8), np.float32), name))
    del graph.output[1:]
    return model


def test_serve_refuses_a_model_without_findable_state(tmp_path):
    path = tmp_path / "no_state.onnx"
    onnx.save(unstreamable_model(), str(path))
    with pytest.raises(StreamError) as expected:
        lstmrt.InferenceSession(str(path)).stream()
    for extra in ([], ["--repository", str(tmp_path / "repo")]):
        result = CliRunner().invoke(cli, ["serve", str(path), *extra])
        assert result.exit_code != 0
        assert f"StreamError: {expected.value}" in " ".join(result.output.split())
    assert not (tmp_path / "repo").exists()


def test_repository_holds_the_sequence_batcher_config(tmp_path):
    result = CliRunner().invoke(cli, ["serve", str(EXAMPLE), "--repository", str(tmp_path), "--name", "bd",
                                      "--max-batch", "32", "--idle-timeout", "5", "--instances", "3"])
    assert result.exit_code == 0, result.output
    config = (tmp_path / "bd" / "config.pbtxt").read_text()
    for needle in ("max_batch_size: 32", "CONTROL_SEQUENCE_START", "CONTROL_SEQUENCE_END",
                   "CONTROL_SEQUENCE_READY", "CONTROL_SEQUENCE_CORRID", "oldest", "count: 3",
                   "max_sequence_idle_microseconds: 5000000", 'name: "x"', "dims: [ -1, 61 ]"):
        assert needle in config, needle
    assert "h0" not in config.split("parameters")[0]            # state is never served
    assert (tmp_path / "bd" / "1" / "model.onnx").read_bytes() == EXAMPLE.read_bytes()
    assert "lstmrt.serve.triton_model" in (tmp_path / "bd" / "1" / "model.py").read_text()


@pytest.mark.serve
def test_a_restarted_server_has_lost_its_live_sequences(tmp_path, sess):
    from lstmrt.serve import Client, ServeError
    first = start_server(EXAMPLE, NAME, 60, tmp_path)
    ports = dict(http_port=first.http_port, grpc_port=first.grpc_port, metrics_port=first.metrics_port)
    family = server_processes(first.grpc_port)
    try:
        client = Client(first.grpc_url)
        stream = client.stream(NAME)
        (a,) = texts(1)
        stream.run({"x": a[:, :10]})
    finally:
        first.stop()
    assert family and alive(family) == []
    from lstmrt.serve import ServeOptions, Server
    with Server(EXAMPLE, ServeOptions(NAME), address="127.0.0.1", log=str(tmp_path / "again.log"), **ports):
        family = server_processes(ports["grpc_port"])
        with pytest.raises(ServeError, match="START"):
            stream.run({"x": a[:, 10:20]})
        with client.stream(NAME) as again:                 # a new stream starts over and is exact
            np.testing.assert_allclose(again.run({"x": a[:, :20]})[0], whole_run(sess, a[:, :20]), atol=1e-5)
    assert family and alive(family) == []
