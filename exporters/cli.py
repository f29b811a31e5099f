"""Click commands `export` and `streamify` (registered in lstmrt's CLI with main.add_command;
until then: python -m lstmrt.exporters.cli export|streamify ...).

Only the framework the source file needs is imported.
"""
from __future__ import annotations

import sys

import click


def _fail(e: Exception):
    raise click.ClickException(f"{type(e).__name__}: {e}") from None


@click.command("export")
@click.argument("source", type=click.Path(exists=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="the .onnx file to write")
@click.option("--no-state", is_flag=True, help="plain model: no state inputs/outputs, zero initial state")
@click.option("--no-verify", is_flag=True, help="skip running the framework, onnxruntime and lstmrt to compare")
@click.option("--framework", type=click.Choice(["keras", "torch", "paddle"]), default=None,
              help="default: from the file's extension (.keras/.h5 or a SavedModel folder, .pt, .json/.pdmodel)")
def export_command(source, output, no_state, no_verify, framework):
    """Export SOURCE (Keras 3 .keras or legacy .h5, a TensorFlow SavedModel folder, TorchScript .pt,
    paddle.jit.save .json/.pdmodel) to ONNX with native LSTM/GRU/RNN nodes, streamable unless --no-state,
    verified unless --no-verify.

    A SavedModel folder (Keras 3 model.export) is converted by tf2onnx (pip install tf2onnx): plain
    LSTMs become native nodes; a GRU, SimpleRNN or masked LSTM there is refused, naming the layer
    (save the model as .keras instead, which covers them all)."""
    from . import ExportError, VerificationError, export
    try:
        report = export(source, output, state=not no_state, verify=not no_verify, framework=framework)
    except (ExportError, VerificationError) as e:
        _fail(e)
    click.echo(str(report))


@click.command("streamify")
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="the .onnx file to write")
@click.option("--no-verify", is_flag=True, help="skip comparing against the original model")
def streamify_command(source, output, no_verify):
    """Lift the recurrent state of SOURCE (any ONNX model) into paired graph inputs/outputs."""
    from . import ExportError, VerificationError, streamify_file
    try:
        report = streamify_file(source, output, verify=not no_verify)
    except (ExportError, VerificationError) as e:
        _fail(e)
    click.echo(str(report))


@click.group()
def main():
    """lstmrt's exporter commands (standalone entry; `lstmrt export` once registered)."""


main.add_command(export_command)
main.add_command(streamify_command)

if __name__ == "__main__":
    sys.exit(main())
