"""Stream a bracket-depth LSTM over some text with lstmrt, a few characters per call.

The model (trained by train_example.py) reads one character per time step and predicts
how deeply nested in ( [ { brackets the text is after that character. The count lives in
the LSTM's h/c state, so feeding the text in chunks only works if that state is carried
from call to call -- lstmrt's stream() does that.

    python examples/stream_demo.py [--backend native] [--chunk 16]

Each printed line is one stream.run() call: the characters fed, then the predicted depth
after each of them (one digit per character, column for column; "x" marks a wrong one),
then how many matched the true depth. Finally the streamed result is compared with one
whole sess.run() call.
"""
import argparse
import os
import sys

import numpy as np

import lstmrt

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "bracket_depth.onnx")
INPUT = os.path.join(HERE, "bracket_depth_input.npy")
TEXT = os.path.join(HERE, "bracket_depth_input.txt")


def true_depths(text, max_depth=9):
    d, out = 0, []
    for c in text:
        d = d + 1 if c in "([{" else max(d - 1, 0) if c in ")]}" else d
        out.append(min(d, max_depth))
    return np.array(out)


def shape_str(arg):
    return "[" + ",".join(str(d) for d in arg.shape) + "]"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="native", help="lstmrt backend (default: native)")
    ap.add_argument("--chunk", type=int, default=16, help="time steps per stream.run() call")
    args = ap.parse_args(argv)

    sess = lstmrt.InferenceSession(MODEL, backend=args.backend)
    x = np.load(INPUT)  # [1, T, 61] one-hot characters
    with open(TEXT, encoding="utf-8") as f:
        text = f.read()
    assert x.shape[1] == len(text), (x.shape, len(text))
    truth = true_depths(text)

    ins = ", ".join(f"{a.name}{shape_str(a)}" for a in sess.get_inputs())
    outs = ", ".join(f"{a.name}{shape_str(a)}" for a in sess.get_outputs())
    print(f"model bracket_depth.onnx, backend {args.backend!r}")
    print(f"  inputs  {ins}\n  outputs {outs}")
    print(f"streaming {len(text)} characters, {args.chunk} per call; "
          f"digits = predicted nesting depth after each character")

    stream = sess.stream()
    parts = []
    for s in range(0, x.shape[1], args.chunk):
        (y,) = stream.run({"x": x[:, s:s + args.chunk]})  # y [1, t, 10] depth probabilities
        parts.append(y)
        pred = y[0].argmax(-1)
        want = truth[s:s + len(pred)]
        shown = "".join(c if c.isprintable() else " " for c in text[s:s + len(pred)])
        marks = "".join(str(p) if p == t else "x" for p, t in zip(pred, want))
        ok = int((pred == want).sum())
        print(f"  {shown:<{args.chunk}s}  {marks:<{args.chunk}s}  {ok:2d}/{len(pred)}")

    y_stream = np.concatenate(parts, axis=1)
    pred = y_stream[0].argmax(-1)
    acc = (pred == truth).mean()
    print(f"accuracy vs true depth: {int((pred == truth).sum())}/{len(truth)} = {100 * acc:.1f}%"
          f" (x = wrong); mean confidence {y_stream[0].max(-1).mean():.3f}")

    # The same text in one call, state passed explicitly, must give the same numbers.
    hidden = stream.state["h0"].shape[-1]
    zeros = np.zeros((1, 1, hidden), np.float32)
    y_whole, hn, cn = sess.run(None, {"x": x, "h0": zeros, "c0": zeros})
    diff = max(np.abs(y_stream - y_whole).max(), np.abs(stream.state["h0"] - hn).max(),
               np.abs(stream.state["c0"] - cn).max())
    print(f"streamed vs one whole sess.run(): max abs diff {diff:.2e} (y, hn, cn)")
    return 0 if diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
