"""Serving lstmrt streams over the network on Triton Inference Server's sequence batcher.

`lstmrt serve MODEL.onnx` (lstmrt.serve.server) generates a Triton model repository
(lstmrt.serve.repository) whose Python-backend model (lstmrt.serve.triton_model) steps every
live sequence through one stream group; `Client` (lstmrt.serve.client) streams against it.
Needs the `serve` extra: pip install 'lstmrt[serve]'.
"""
from .client import Client, RemoteStream, server_index
from .interface import ServedInterface, ServeError, served_interface
from .repository import ServeOptions, config_pbtxt, write_repository
from .server import Server

__all__ = ["Client", "RemoteStream", "Server", "ServeOptions", "ServeError", "ServedInterface",
           "served_interface", "server_index", "write_repository", "config_pbtxt"]
