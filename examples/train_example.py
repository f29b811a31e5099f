"""Train the example model: a character-level LSTM that tracks bracket nesting depth.

The model reads text one character at a time and, after every character, predicts how
deeply nested the text is at that point: the number of brackets -- ( [ { -- opened and
not yet closed (0..9). Counting has to be carried in the LSTM's recurrent state, so the
model only works when streamed with that state kept between calls -- which is what
lstmrt does.

Writes, beside this file:
  bracket_depth.onnx           the model (opset 17, native LSTM node)
  bracket_depth_input.npy      the example input: EXAMPLE_TEXT one-hot encoded, [1, T, F] float32
  bracket_depth_input.txt      EXAMPLE_TEXT itself (the demo decodes with it)

Graph:  inputs  x [batch, time, 61] float32 (one-hot characters, batch_first)
                h0, c0 [1, batch, 32] float32 (recurrent state; zeros to start)
        outputs y [batch, time, 10] float32 (softmax over depth 0..9)
                hn, cn [1, batch, 32] float32 (state after the last step)

Needs torch (CPU is plenty; ~30-60 s on 2 cores), onnx, onnxruntime, numpy:
    pip install torch onnx onnxruntime numpy
    python examples/train_example.py
"""
import os
import random
import time
import warnings

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
NAME = "bracket_depth"
SEED = 20240611
OPSET = 17

HIDDEN = 32
MAX_DEPTH = 9  # classes 0..9
# Alphabet: index 0 is "any other character"; upper case is folded to lower case.
VOCAB = ["?"] + list("()[]{}") + list(" \n,.:;=+-*/<>_'\"#!") + list("0123456789") + list(
    "abcdefghijklmnopqrstuvwxyz")
CHAR_TO_IDX = {c: i for i, c in enumerate(VOCAB)}
N_FEATURES = len(VOCAB)  # 61

# The example input the demo streams: a bit of Lisp, a bit of Python, a bit of JSON.
EXAMPLE_TEXT = (
    "(define (fact n) (if (= n 0) 1 (* n (fact (- n 1))))) "
    "print(sorted([f(x) for x in range(10)], key=lambda v: (v[0], -v[1]))) "
    '{"a": [1, 2, {"b": [3, [4, 5]]}], "c": {"d": []}}'
)

OPEN, CLOSE = "([{", ")]}"


def char_index(ch):
    """Map a character to its one-hot index (0 = other)."""
    ch = ch.lower()
    return CHAR_TO_IDX.get(ch, 0)


def encode(text):
    """text -> one-hot float32 array [1, len(text), N_FEATURES]."""
    idx = np.array([char_index(c) for c in text], dtype=np.int64)
    x = np.zeros((1, len(text), N_FEATURES), dtype=np.float32)
    x[0, np.arange(len(text)), idx] = 1.0
    return x


def depths(text):
    """Ground truth: nesting depth after each character, clipped to 0..MAX_DEPTH."""
    d, out = 0, []
    for c in text:
        if c in OPEN:
            d += 1
        elif c in CLOSE:
            d = max(d - 1, 0)
        out.append(min(d, MAX_DEPTH))
    return out


# ---------------------------------------------------------------- synthetic training text
WORDS = ["x", "n", "v", "fact", "map", "key", "len", "if", "let", "def", "print", "range",
         "lambda", "self", "data", "sum", "f", "g", "a", "b", "i", "for", "in", "return"]
PUNCT = [" ", " ", " ", ", ", ": ", " = ", " + ", " - ", " * ", "/", ".", ";", "\n", "'",
         '"', " < ", " > ", "_", "#", "!"]


def random_text(length, rng):
    """Code-like text whose brackets never close below depth 0, depth up to MAX_DEPTH-1."""
    out, depth = [], 0
    target_max = rng.randint(2, MAX_DEPTH - 1)
    while sum(len(s) for s in out) < length:
        r = rng.random()
        if r < 0.22 and depth < target_max:
            out.append(rng.choice(OPEN))
            depth += 1
        elif r < 0.42 and depth > 0:
            out.append(rng.choice(CLOSE))
            depth -= 1
        elif r < 0.65:
            w = rng.choice(WORDS)
            out.append(w.upper() if rng.random() < 0.05 else w)
        elif r < 0.80:
            out.append(str(rng.randint(0, 999)))
        else:
            out.append(rng.choice(PUNCT))
    return "".join(out)[:length]


def make_batch(batch, length, rng):
    texts = [random_text(length, rng) for _ in range(batch)]
    x = np.concatenate([encode(t) for t in texts], axis=0)
    y = np.array([depths(t) for t in texts], dtype=np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


# ---------------------------------------------------------------------------- the model
class DepthLSTM(nn.Module):
    def __init__(self, n_in=N_FEATURES, hidden=HIDDEN, n_out=MAX_DEPTH + 1):
        super().__init__()
        self.rnn = nn.LSTM(n_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_out)

    def logits(self, x, h0, c0):
        y, (hn, cn) = self.rnn(x, (h0, c0))
        return self.head(y), hn, cn

    def forward(self, x, h0, c0):  # x [B, T, F]; h0, c0 [1, B, H]
        z, hn, cn = self.logits(x, h0, c0)
        return torch.softmax(z, dim=-1), hn, cn


def zeros_state(batch):
    return torch.zeros(1, batch, HIDDEN), torch.zeros(1, batch, HIDDEN)


def accuracy(model, x, y):
    with torch.no_grad():
        p, _, _ = model(x, *zeros_state(x.shape[0]))
    return (p.argmax(-1) == y).float().mean().item()


def train(model, steps=2500, batch=32, rng=None):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.time()
    for step in range(1, steps + 1):
        length = rng.choice([32, 64, 128, 192])
        x, y = make_batch(batch, length, rng)
        z, _, _ = model.logits(x, *zeros_state(batch))
        loss = loss_fn(z.reshape(-1, z.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 500 == 0 or step == 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  ({time.time() - t0:.0f} s)")


def export(model, path):
    model.eval()
    x = torch.from_numpy(encode("f(x)"))
    h0, c0 = zeros_state(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # batch_first / LSTM shape warnings
        torch.onnx.export(
            model, (x, h0, c0), path, dynamo=False, opset_version=OPSET,
            input_names=["x", "h0", "c0"], output_names=["y", "hn", "cn"],
            dynamic_axes={"x": {0: "batch", 1: "time"}, "y": {0: "batch", 1: "time"},
                          "h0": {1: "batch"}, "c0": {1: "batch"},
                          "hn": {1: "batch"}, "cn": {1: "batch"}},
            do_constant_folding=True)


def check_onnx(model, path, text):
    import onnx
    import onnxruntime as ort

    m = onnx.load(path)
    onnx.checker.check_model(m)
    ops = sorted({n.op_type for n in m.graph.node})
    print("ONNX op types:", ", ".join(ops))
    allowed = {"LSTM", "Identity", "Transpose", "Squeeze", "Unsqueeze", "Reshape", "Concat",
               "Slice", "Split", "Gather", "Shape", "Constant", "ConstantOfShape", "Expand",
               "Cast", "MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Relu", "Tanh",
               "Sigmoid", "Softmax"}
    assert set(ops) <= allowed, f"unexpected ops: {set(ops) - allowed}"

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    for kind, vis in (("input", m.graph.input), ("output", m.graph.output)):
        for vi in vis:
            print(f"  {kind:6s} {vi.name:3s} {dims(vi)}")

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = encode(text)
    h0 = np.zeros((1, 1, HIDDEN), np.float32)
    c0 = np.zeros((1, 1, HIDDEN), np.float32)
    y, hn, cn = sess.run(None, {"x": x, "h0": h0, "c0": c0})
    with torch.no_grad():
        ty, thn, tcn = model(torch.from_numpy(x), torch.from_numpy(h0), torch.from_numpy(c0))
    err = max(np.abs(y - ty.numpy()).max(), np.abs(hn - thn.numpy()).max(),
              np.abs(cn - tcn.numpy()).max())
    print(f"onnxruntime vs torch: max abs err {err:.2e}")
    assert err < 1e-5

    # Streaming by hand: chunks of 7 with state carried must equal one whole call.
    h, c, parts = h0, c0, []
    for s in range(0, x.shape[1], 7):
        yc, h, c = sess.run(None, {"x": x[:, s:s + 7], "h0": h, "c0": c})
        parts.append(yc)
    serr = max(np.abs(np.concatenate(parts, axis=1) - y).max(), np.abs(h - hn).max(),
               np.abs(c - cn).max())
    print(f"chunked (7 steps/call, state carried) vs whole: max abs err {serr:.2e}")
    assert serr < 1e-5

    # Batch of 3 with different lengths' worth of state: batch dimension is dynamic.
    xb = np.concatenate([x, x[:, ::-1], x], axis=0)
    yb, _, _ = sess.run(None, {"x": xb, "h0": np.zeros((1, 3, HIDDEN), np.float32),
                               "c0": np.zeros((1, 3, HIDDEN), np.float32)})
    assert yb.shape == (3, x.shape[1], MAX_DEPTH + 1)
    assert np.abs(yb[0] - y[0]).max() < 1e-5
    return y


def main():
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    rng = random.Random(SEED)

    model = DepthLSTM()
    train(model, rng=rng)
    model.eval()

    xt, yt = make_batch(256, 256, random.Random(SEED + 1))  # longer than any training text
    print(f"held-out accuracy (256 texts x 256 chars): {accuracy(model, xt, yt):.4f}")
    ex_y = torch.tensor([depths(EXAMPLE_TEXT)])
    print(f"example text accuracy: {accuracy(model, torch.from_numpy(encode(EXAMPLE_TEXT)), ex_y):.4f}")

    onnx_path = os.path.join(HERE, NAME + ".onnx")
    export(model, onnx_path)
    check_onnx(model, onnx_path, EXAMPLE_TEXT)

    np.save(os.path.join(HERE, NAME + "_input.npy"), encode(EXAMPLE_TEXT))
    with open(os.path.join(HERE, NAME + "_input.txt"), "w", encoding="utf-8") as f:
        f.write(EXAMPLE_TEXT)
    print(f"wrote {onnx_path} ({os.path.getsize(onnx_path)} bytes), "
          f"{NAME}_input.npy {encode(EXAMPLE_TEXT).shape}, {NAME}_input.txt")


if __name__ == "__main__":
    main()
