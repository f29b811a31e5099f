"""The `lstmrt` command: run and inspect models."""
from __future__ import annotations

import sys

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from .errors import LstmrtError
from .session import InferenceSession
from .state_pairs import time_axes

console = Console()


FRAMEWORK_EXTRAS = {"torch": "torch", "tensorflow": "keras", "keras": "keras", "tf2onnx": "keras",
                    "paddle": "paddle", "paddle2onnx": "paddle"}


class _Main(click.Group):
    """Whatever a command lets through that a user can provoke becomes a one-line error: an
    LstmrtError, or a framework that is not installed (with the extra that installs it)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LstmrtError as e:
            raise click.ClickException(f"{type(e).__name__}: {e}") from None
        except ModuleNotFoundError as e:
            top = (e.name or "").partition(".")[0]
            if top not in FRAMEWORK_EXTRAS:
                raise
            raise click.ClickException(f"this needs {top}, which is not installed: "
                                       f"pip install 'lstmrt[{FRAMEWORK_EXTRAS[top]}]'") from None


def _inputs_listing(session) -> str:
    """The model's inputs with their shapes, for messages about what to give."""
    return ", ".join(f"{i.name} {i.shape if i.shape is not None else '[?]'}" for i in session.get_inputs())


def _load_inputs(session, specs: tuple) -> dict:
    names = [i.name for i in session.get_inputs()]
    feedable = set(names) | {i.name for i in session.model.overridable}
    feed = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:   # a bare path names the model's only input
            if len(names) != 1:
                raise click.BadParameter(f"'{spec}': give NAME=PATH; the model's inputs are {_inputs_listing(session)}")
            name, path = names[0], spec
        if name not in feedable:
            raise click.BadParameter(f"the model has no input '{name}'; its inputs are {_inputs_listing(session)}")
        try:
            feed[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise click.BadParameter(f"cannot read input '{name}' from '{path}': {e}") from None
    return feed


class _Interface:
    """A loaded model's inputs, as _load_inputs reads them from a session (no backend built)."""
    def __init__(self, model):
        self.model = model

    def get_inputs(self):
        return list(self.model.inputs)


def _concat_axis(session, name: str, chunks: list, chunk_lens: list, input_time_dim) -> int | None:
    """The axis along which an output's chunks join, or None if the output is not per-step."""
    declared = session.model.output(name).shape or []
    if isinstance(input_time_dim, str) and input_time_dim in declared:
        return declared.index(input_time_dim)
    ndim = chunks[0].ndim
    candidates = [a for a in range(ndim) if all(c.shape[a] == n for c, n in zip(chunks, chunk_lens))]
    return candidates[0] if candidates else None


def _run_streamed(session, feed: dict, chunk: int, time_axis: int | None) -> dict:
    stream = session.stream()
    axes = time_axes(session.model)
    streamed = {n: (time_axis if time_axis is not None else axes.get(n)) for n in feed if n not in stream.pairs}
    missing = [i.name for i in session.get_inputs() if i.name not in feed and i.name not in stream.pairs]
    if missing:
        raise click.UsageError(f"missing input(s) {missing}: give each with --input NAME=FILE.npy "
                               f"(state inputs may be left out: they start at zero); the model's inputs are "
                               f"{_inputs_listing(session)}")
    if not streamed:
        raise click.UsageError("no streamed input given, only state; the model's inputs are " + _inputs_listing(session))
    if any(a is None for a in streamed.values()):
        raise click.UsageError(f"cannot tell the time axis of {[n for n, a in streamed.items() if a is None]}; "
                               "pass --time-axis")
    for n, a in streamed.items():
        if not -feed[n].ndim <= a < feed[n].ndim:
            raise click.UsageError(f"time axis {a} is out of range for input '{n}' of shape {list(feed[n].shape)}")
    steps = {feed[n].shape[a] for n, a in streamed.items()}
    if len(steps) != 1:
        raise click.UsageError(f"streamed inputs disagree on their number of steps: {steps}")
    total = steps.pop()
    if any(n in feed for n in stream.pairs):
        stream.set_state({n: feed[n] for n in stream.pairs if n in feed})
    out_names = [o.name for o in session.get_outputs() if o.name not in stream.pairs.values()]
    pieces, lens = {n: [] for n in out_names}, []
    for start in range(0, total, chunk):
        part = {n: np.take(feed[n], range(start, min(start + chunk, total)), axis=a) for n, a in streamed.items()}
        lens.append(min(chunk, total - start))
        for n, value in zip(out_names, stream.run(part)):
            pieces[n].append(value)
    first_input, first_axis = next(iter(streamed.items()))
    time_dim = (session.model.input(first_input).shape or [None] * (first_axis + 1))[first_axis]
    results = {}
    for n, chunks in pieces.items():
        axis = _concat_axis(session, n, chunks, lens, time_dim)
        results[n] = chunks[-1] if axis is None else np.concatenate(chunks, axis=axis)
    results.update({out: stream.state[inp] for inp, out in stream.pairs.items()})
    return results


def _summary(results: dict) -> Table:
    table = Table(title="outputs")
    for col in ("name", "shape", "dtype", "min", "max", "mean"):
        table.add_column(col, justify="right" if col in ("min", "max", "mean") else "left")
    for name, v in results.items():
        numeric = v.size and np.issubdtype(v.dtype, np.number)
        stats = [f"{v.min():.6g}", f"{v.max():.6g}", f"{v.mean():.6g}"] if numeric else ["", "", ""]
        table.add_row(name, str(list(v.shape)), str(v.dtype), *stats)
    return table


@click.group(cls=_Main)
@click.version_option(package_name="lstmrt")
def main():
    """Run and stream ONNX LSTM/GRU/RNN models on lstmrt's C kernel."""


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--input", "-i", "inputs", multiple=True, metavar="NAME=FILE.npy", help="an input array (repeat)")
@click.option("--stream", is_flag=True, help="feed the inputs in chunks through a stream that carries state")
@click.option("--chunk", type=click.IntRange(min=1), default=16, show_default=True, help="steps per streamed call")
@click.option("--time-axis", type=int, default=None, help="time axis of the streamed inputs (default: from the graph)")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="save all outputs to this .npz")
@click.option("--backend", type=click.Choice(["auto", "native", "onnxruntime"]), default="auto", show_default=True)
@click.option("--simd", type=click.Choice(["scalar", "avx2", "avx512"]), default=None, help="force a SIMD path")
def run(model, inputs, stream, chunk, time_axis, output, backend, simd):
    """Run MODEL on inputs read from .npy files, whole or streamed in chunks."""
    try:
        session = InferenceSession(model, backend=backend, simd=simd)
        feed = _load_inputs(session, inputs)
        missing = [i.name for i in session.get_inputs() if i.name not in feed]
        if stream or missing:
            # a whole run without its state inputs starts from zero state, as one chunk
            results = _run_streamed(session, feed, chunk if stream else sys.maxsize, time_axis)
        else:
            names = [o.name for o in session.get_outputs()]
            results = dict(zip(names, session.run(None, feed)))
    except LstmrtError as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from None
    console.print(_summary(results))
    if output:
        np.savez(output, **results)
        console.print(f"saved {len(results)} output(s) to {output}")


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
def inspect(model):
    """Describe MODEL: interface, recurrent layers, state pairs and which backend runs it."""
    from .report import inspect_model
    try:
        inspect_model(model, console)
    except LstmrtError as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from None


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--input", "-i", "inputs", multiple=True, metavar="NAME=FILE.npy", help="an input (others are random)")
@click.option("--tolerance", type=float, default=1e-4, show_default=True, help="largest allowed difference")
def verify(model, inputs, tolerance):
    """Run MODEL on every available backend and compare each with onnxruntime CPU."""
    from .model import Model
    from .verify import REFERENCE, compare, random_feed
    try:
        loaded = Model(model)
        given = _load_inputs(_Interface(loaded), inputs) if inputs else {}
        names, diffs, missing = compare(loaded, random_feed(loaded, given=given))
    except LstmrtError as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from None
    table = Table(title=f"max |difference| vs {REFERENCE} (tolerance {tolerance:g})")
    table.add_column("output")
    for label in diffs:
        table.add_column(label, justify="right")
    for i, name in enumerate(names):
        table.add_row(name, *[f"{d[i]:.3g}" for d in diffs.values()])
    console.print(table)
    for note in missing:
        console.print(f"not compared: {note}")
    worst = max(max(d) if d else 0.0 for d in diffs.values())
    if worst > tolerance:
        console.print(f"[red]FAIL[/red]: largest difference {worst:.3g} exceeds {tolerance:g}")
        sys.exit(1)
    console.print(f"OK: {len(diffs)} backend(s) agree within {tolerance:g}")


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--backend", "backends", multiple=True, type=click.Choice(["native", "onnxruntime"]),
              help="backend to time (repeat; default both; onnxruntime adds CUDA where it loads)")
@click.option("--chunk", type=click.IntRange(min=1), default=1, show_default=True, help="time steps per call")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="threads per backend")
@click.option("--seconds", type=float, default=1.0, show_default=True,
              help="timing budget per case (the cases take turns in 5 rounds)")
@click.option("--input", "-i", "inputs", multiple=True, metavar="NAME=FILE.npy",
              help="an input to time on (repeat; others are random, shaped like the given ones)")
@click.option("--profile", is_flag=True, help="also the native compiled program's time per instruction")
def bench(model, backends, chunk, batch, threads, seconds, inputs, profile):
    """Time MODEL per call on each backend (whole run and stream), side by side."""
    from rich.progress import Progress

    from .bench import bench as run_bench, with_ratios
    from .model import Model
    backends = list(backends) or ["native", "onnxruntime"]
    skipped = []
    try:
        given = _load_inputs(_Interface(Model(model)), inputs) if inputs else {}
        with Progress(console=console, transient=True) as progress:
            rounds = 5
            task = progress.add_task("timing, each case in turn", total=rounds)
            rows = run_bench(model, backends, chunk, batch, threads, seconds, lambda: progress.advance(task), rounds,
                             given=given, skipped=skipped)
    except LstmrtError as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from None
    for note in skipped:
        console.print(f"not timed: {note}")
    if not rows:
        raise click.ClickException("no backend could run the model on these inputs")
    table = Table(title=f"{model}: batch {rows[0].batch}, {rows[0].steps} step(s) per call, {threads} thread(s)")
    for col in ("backend", "call", "µs/call", "steps/s", "GFLOP/s", "× onnxruntime CPU"):
        table.add_column(col, justify="left" if col in ("backend", "call") else "right")
    for row, ratio in with_ratios(rows):
        table.add_row(row.backend, row.path, f"{row.us_per_call:.1f}", f"{row.steps_per_s:,.0f}",
                      f"{row.gflops:.2f}", "–" if ratio is None else f"{ratio:.2f}")
    console.print(table)
    if profile:
        _print_profile(model, chunk, batch, threads, given)


def _print_profile(model, chunk, batch, threads, given):
    from .bench import profile as run_profile
    try:
        rows = run_profile(model, batch, chunk, threads, given=given)
    except LstmrtError as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from None
    total = sum(seconds for _, seconds in rows) or 1.0
    table = Table(title=f"native compiled program, {len(rows)} instructions: {total * 1e6:.1f} µs per call in C")
    for col in ("instruction (node, op)", "µs/call", "share"):
        table.add_column(col, justify="left" if col.startswith("instr") else "right")
    for label, seconds in rows:
        table.add_row(label, f"{seconds * 1e6:.2f}", f"{seconds / total:.0%}")
    console.print(table)


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", default=None, help="model name on the server (default: the file's stem)")
@click.option("--http-port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: a free port")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=8001, show_default=True, help="0: a free port")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=8002, show_default=True, help="0: a free port")
@click.option("--address", default="0.0.0.0", show_default=True, help="address the endpoints listen on")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="model instances (each its own session and stream group; a sequence stays on one)")
@click.option("--max-batch", type=click.IntRange(min=1), default=64, show_default=True,
              help="most sequences stepped by one group call")
@click.option("--max-sequences", type=click.IntRange(min=1), default=1024, show_default=True,
              help="live sequences per instance; more wait for one to end")
@click.option("--idle-timeout", type=click.FloatRange(min=0.001), default=60.0, show_default=True,
              help="seconds after a sequence's last request before it is freed")
@click.option("--queue-delay-us", type=click.IntRange(min=0), default=0, show_default=True,
              help="how long Triton may hold a request to fill a batch")
@click.option("--backend", type=click.Choice(["auto", "native", "onnxruntime"]), default="auto", show_default=True)
@click.option("--repository", type=click.Path(file_okay=False), default=None,
              help="only write the Triton model repository here (for your own tritonserver) and exit")
@click.option("--verbose", is_flag=True, help="show Triton's info log, not only warnings and errors")
def serve(model, name, http_port, grpc_port, metrics_port, address, instances, max_batch, max_sequences,
          idle_timeout, queue_delay_us, backend, repository, verbose):
    """Serve MODEL's streams over HTTP/gRPC on Triton Inference Server's sequence batcher."""
    import os
    import signal
    import time

    from .serve import ServeOptions, Server, write_repository
    options = ServeOptions(name or os.path.splitext(os.path.basename(model))[0], instances, max_batch,
                           max_sequences, idle_timeout, backend, queue_delay_us)
    if repository:
        try:
            written = write_repository(model, repository, options)
        except LstmrtError as e:
            raise click.ClickException(f"{type(e).__name__}: {e}") from None
        console.print(f"wrote {written} (run: tritonserver --model-repository={repository}; "
                      "its Python backend must import lstmrt)")
        return

    def stop(signum, frame):
        raise KeyboardInterrupt
    # before Triton starts (it runs in its own session, so no signal reaches it but through us);
    # SIGINT too: a shell starts `lstmrt serve ... &` with SIGINT ignored
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    server = Server(model, options, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                    address=address, verbose=verbose)
    try:
        server.start()                 # stops what it started if interrupted or failing
        click.echo(f"serving '{options.name}' ({instances} instance(s)); Ctrl-C stops it\n"
                   f"  grpc     {server.grpc_url}\n  http     {server.http_url}\n  metrics  {server.metrics_url}")
        while server.poll() is None:
            time.sleep(0.5)
        status = server.stop()
        raise click.ClickException(f"tritonserver exited on its own with status {status}")
    except LstmrtError as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from None
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)     # a second Ctrl-C must not cut the shutdown short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        status = server.stop()
        console.print(f"stopped (tritonserver exit status {status})")


def _register_exporters():
    # exporters/ imports no framework until a command runs, so this stays cheap
    from .exporters.cli import export_command, streamify_command
    main.add_command(export_command)
    main.add_command(streamify_command)


_register_exporters()

if __name__ == "__main__":
    sys.exit(main())
