"""Whole models as users bring them: lstmrt (backend="auto") against onnxruntime (CPU, one
intra-op thread), same process, interleaved, batch 1, one streaming-sized call each.

Models: the shipped example, the exporter fixtures (tests/fixtures/exporters), the model
fixtures (tests/fixtures/models: VAD-, keyword-spotting- and Keras-shaped) and the third-party
fixtures (tests/fixtures/third_party).  A call is one time step (one 512-sample chunk for a
model fed raw samples).  Streamable models are timed as `stream.run` (state carried) against
onnxruntime fed the state by hand; the others as `sess.run` against onnxruntime's run.  Each
pair is first checked numerically (max difference < 1e-4).  Prints microseconds per call, the
ratio (onnxruntime / lstmrt: above 1 is faster), which backend `auto` chose, and the geometric
mean.  `--profile` also prints each compiled program's slowest instructions.

    python benchmarks/bench_models.py [--quick] [--profile] [--only NAME ...]
"""
from __future__ import annotations

import argparse
import glob
import math
import platform
from pathlib import Path

import numpy as np
import onnxruntime as ort

import lstmrt
from lstmrt.bench import cpu_flags, time_interleaved
from lstmrt.errors import StreamError

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 512   # samples per call for a model fed raw audio
INT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


def model_paths() -> list[Path]:
    found = [ROOT / "examples" / "bracket_depth.onnx"]
    for folder in ("exporters", "models", "third_party"):
        found += sorted(Path(p) for p in glob.glob(str(ROOT / "tests" / "fixtures" / folder / "*.onnx")))
    return found


def feed_for(sess, skip=()) -> dict:
    """Batch 1, one step: unknown dims 1, except a raw-sample axis (rank-2 float input): CHUNK."""
    rng = np.random.default_rng(0)
    feed = {}
    for info in sess.get_inputs():
        if info.name in skip:
            continue
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in info.shape]
        if info.type == "tensor(float)" and len(dims) == 2 and not isinstance(info.shape[1], int):
            dims[1] = CHUNK
        if info.type == "tensor(float)":
            feed[info.name] = rng.standard_normal(dims).astype(np.float32)
        elif info.type in INT_TYPES:
            scalar = int(np.prod(dims)) == 1 and len(dims) <= 1    # a sample rate, or tokens
            feed[info.name] = np.full(dims, 16000 if scalar else 1, INT_TYPES[info.type])
        else:
            feed[info.name] = np.zeros(dims, np.bool_)
    return feed


def case(path: Path, ort_session):
    """(label, lstmrt callable, onnxruntime callable, backend chosen, lstmrt session, feed)."""
    sess = lstmrt.InferenceSession(str(path))
    try:
        stream = sess.stream()
    except StreamError:
        stream = None
    if stream is not None and stream.pairs:
        x = feed_for(sess, skip=stream.pairs)
        stream.run(x)                           # sizes the state; the check below starts from it
        state = stream.state
        full = {**x, **state}
        names = [o.name for o in ort_session.get_outputs()]
        streamed = [o.name for o in sess.get_outputs() if o.name not in stream.pairs.values()]
        outs = [names.index(n) for n in streamed]
        want = ort_session.run(None, full)
        check = sess.stream()
        check.set_state(state)
        got = check.run(x)
        diff = max((float(np.max(np.abs(g - want[i]))) for g, i in zip(got, outs)), default=0.0)
        return "stream", (lambda: stream.run(x)), (lambda: ort_session.run(None, full)), sess, full, diff
    full = feed_for(sess)
    diff = max(float(np.max(np.abs(g - w))) for g, w in zip(sess.run(None, full), ort_session.run(None, full)))
    return "run", (lambda: sess.run(None, full)), (lambda: ort_session.run(None, full)), sess, full, diff


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="shorter timing windows")
    parser.add_argument("--profile", action="store_true", help="the compiled programs' slowest instructions")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only the models whose file name contains a NAME")
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    print(f"# {platform.machine()}, onnxruntime {ort.__version__}, CPU flags: {' '.join(cpu_flags())}")
    print(f"{'model':32} {'call':6} {'backend':12} {'ort us':>8} {'lstmrt us':>9} {'ratio':>6} {'max diff':>9}")
    ratios = []
    for path in model_paths():
        if args.only and not any(name in path.name for name in args.only):
            continue
        ort_session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        kind, mine, theirs, sess, feed, diff = case(path, ort_session)
        assert diff < 1e-4, f"{path.name}: lstmrt differs from onnxruntime by {diff}"
        t_ort, t_mine = time_interleaved([theirs, mine], 0.6 if args.quick else 2.0)
        ratios.append(t_ort / t_mine)
        print(f"{path.name[:32]:32} {kind:6} {sess.backend:12} {t_ort * 1e6:8.1f} {t_mine * 1e6:9.1f} "
              f"{t_ort / t_mine:6.2f} {diff:9.1e}")
        if args.profile and sess.backend == "native":
            for label, seconds in sess.profile(feed)[:5]:
                print(f"{'':8}{seconds * 1e6:8.2f} us  {label}")
    print(f"geometric mean ratio: {math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f} over {len(ratios)} models")


if __name__ == "__main__":
    main()
