"""A Python client for `lstmrt serve`: remote streams shaped like local ones.

    client = Client(["host-a:8001", "host-b:8001"])     # gRPC; "http://host:8000" for HTTP
    with client.stream("bracket_depth") as s:
        (y,) = s.run({"x": x_chunk})                     # the model's own layout, batch 1

Each stream gets a fresh random 63-bit sequence id and stays on one server, picked by a hash
of that id: every chunk of a sequence must reach the server holding its state.  Requests also
carry the id in the `lstmrt-sequence-id` header, for a load balancer to hash on instead.
"""
from __future__ import annotations

import hashlib
import secrets
import threading

import numpy as np

from ..errors import InputError
from .interface import TRITON_TYPES, ServedInterface, ServeError

AFFINITY_HEADER = "lstmrt-sequence-id"


def server_index(sequence_id: int, servers: int) -> int:
    """Which of `servers` holds a sequence: a stable hash, the same in every client process."""
    digest = hashlib.blake2b(sequence_id.to_bytes(8, "little"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % servers


def _client_module(url: str):
    if url.startswith(("http://", "https://")):
        import tritonclient.http as module
        return module, url.split("://", 1)[1], url.startswith("https://")
    import tritonclient.grpc as module
    return module, url.split("://", 1)[1] if url.startswith("grpc://") else url, False


class Client:
    """Streams on one or more lstmrt servers.  Safe to share between threads (each thread
    gets its own connections)."""

    def __init__(self, urls, *, timeout: float | None = None):
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("give at least one server URL")
        try:
            [_client_module(u) for u in self.urls]
        except ImportError:
            raise ServeError("lstmrt.serve.Client needs tritonclient: pip install 'lstmrt[serve]'") from None
        self.timeout = timeout
        self._local = threading.local()
        self._interfaces: dict = {}
        self._lock = threading.Lock()

    def connection(self, index: int):
        """(tritonclient module, this thread's InferenceServerClient) for server `index`."""
        conns = self._local.__dict__.setdefault("conns", {})
        if index not in conns:
            module, address, ssl = _client_module(self.urls[index])
            kwargs = {"ssl": True} if ssl else {}
            conns[index] = (module, module.InferenceServerClient(address, **kwargs))
        return conns[index]

    def interface(self, model_name: str, index: int = 0) -> ServedInterface:
        """The served model's inputs and outputs (read once from its Triton config)."""
        with self._lock:
            if (model_name, index) in self._interfaces:
                return self._interfaces[model_name, index]
        module, conn = self.connection(index)
        try:
            config = conn.get_model_config(model_name, **({"as_json": True} if module.__name__.endswith("grpc") else {}))
        except module.InferenceServerException as e:
            raise ServeError(f"{self.urls[index]}: cannot read model '{model_name}': {e.message()}") from None
        config = config.get("config", config)
        text = config.get("parameters", {}).get("lstmrt_interface", {}).get("string_value")
        if text is None:
            raise ServeError(f"{self.urls[index]}: model '{model_name}' is not served by lstmrt serve")
        interface = ServedInterface.from_json(text)
        with self._lock:
            self._interfaces[model_name, index] = interface
        return interface

    def stream(self, model_name: str, sequence_id: int | None = None) -> "RemoteStream":
        sequence_id = sequence_id or secrets.randbits(63) or 1
        return RemoteStream(self, model_name, sequence_id, server_index(sequence_id, len(self.urls)))

    def close(self) -> None:
        for _, conn in self._local.__dict__.pop("conns", {}).values():
            conn.close()


class RemoteStream:
    """One sequence on a server: run() chunks in order, close() (or leaving a `with`) ends it."""

    def __init__(self, client: Client, model_name: str, sequence_id: int, server: int):
        self.client, self.model_name, self.sequence_id, self.server = client, model_name, sequence_id, server
        self.url = client.urls[server]
        self._interface = client.interface(model_name, server)
        self._started = False
        self.closed = False

    def run(self, input_feed: dict, end: bool = False) -> list:
        """One chunk (the model's non-state inputs, batch 1, its own layout) -> the non-state
        outputs, in graph order and layout.  end=True makes it the sequence's last chunk."""
        if self.closed:
            raise ServeError(f"stream {self.sequence_id} is closed")
        names = [t.name for t in self._interface.inputs]
        if set(input_feed) != set(names):
            raise InputError(f"a chunk carries exactly the inputs {names}; got {sorted(input_feed)}")
        module, _ = self.client.connection(self.server)
        inputs = []
        for t in self._interface.inputs:
            value = np.asarray(input_feed[t.name])
            if value.ndim != len(t.dims) + 1 or value.shape[t.batch_axis] != 1:
                raise InputError(f"input '{t.name}' has shape {list(value.shape)}; a stream's chunk has batch 1 at "
                                 f"axis {t.batch_axis} and {len(t.dims) + 1} dims")
            served = t.to_served(value.astype(t.dtype, copy=False))
            tensor = module.InferInput(t.name, list(served.shape), TRITON_TYPES[t.dtype][len("TYPE_"):])
            tensor.set_data_from_numpy(served)
            inputs.append(tensor)
        result = self._infer(inputs, end)
        return [t.to_model(result.as_numpy(t.name)) for t in self._interface.outputs]

    def _infer(self, inputs: list, end: bool, outputs=None):
        module, conn = self.client.connection(self.server)
        try:
            result = conn.infer(self.model_name, inputs, outputs=outputs, sequence_id=self.sequence_id,
                                sequence_start=not self._started, sequence_end=end,
                                headers={AFFINITY_HEADER: str(self.sequence_id)},
                                **({"client_timeout": self.client.timeout} if self.client.timeout else {}))
        except module.InferenceServerException as e:
            raise ServeError(f"{self.url} model '{self.model_name}' sequence {self.sequence_id}: {e.message()}") from None
        self._started = True      # only once the server has the sequence (a failed first chunk may be retried)
        if end:
            self.closed = True
        return result

    def reset(self) -> None:
        """Forget the carried state, as Stream.reset(): the next chunk goes with START."""
        if self.closed:
            raise ServeError(f"stream {self.sequence_id} is closed")
        self._started = False

    def close(self) -> None:
        """End the sequence on the server (freeing its state there); a no-op once ended."""
        if self.closed:
            return
        if self._started:
            self._infer([], end=True, outputs=[])
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
