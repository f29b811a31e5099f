"""The model Triton's Python backend runs for `lstmrt serve` (the generated model.py imports it).

One instance = one lstmrt session and one stream group (lstmrt.serve.sequences).  An execution
decodes each request's controls and chunk, steps the live sequences together, and answers
each request on its own: a request that does not fit gets a Triton error naming the input,
the others their outputs.  Exported metrics (Triton's metrics endpoint, labelled by model and
instance): lstmrt_live_sequences, lstmrt_sequences_started_total,
lstmrt_sequences_freed_total{reason="end"|"idle"}, lstmrt_group_steps_total,
lstmrt_group_chunks_total (chunks / steps = sequences per group call); published every 0.2 s.
"""
from __future__ import annotations

import json
import os
import threading

import numpy as np

from ..errors import InputError
from .interface import served_interface
from .sequences import Chunk, LiveSequences

PUBLISH_EVERY_S = 0.2
COUNTERS = {"started": ("lstmrt_sequences_started_total", {}, "sequences started (START flag)"),
            "restarted": ("lstmrt_sequences_restarted_total", {}, "live sequences reset by a new START"),
            "freed_end": ("lstmrt_sequences_freed_total", {"reason": "end"}, "sequences freed"),
            "freed_idle": ("lstmrt_sequences_freed_total", {"reason": "idle"}, "sequences freed"),
            "steps": ("lstmrt_group_steps_total", {}, "stream-group calls"),
            "chunks": ("lstmrt_group_chunks_total", {}, "sequence chunks stepped by those calls")}


class _Metrics:
    """Triton custom metrics mirroring LiveSequences' counts."""

    def __init__(self, pb_utils, labels: dict):
        family = pb_utils.MetricFamily
        # a family must outlive its metrics: keep every one
        families = {"live": family(name="lstmrt_live_sequences", description="live sequences held",
                                   kind=family.GAUGE)}
        self._families = families
        self._live = families["live"].Metric(labels=labels)
        self._counters = {}
        for key, (name, extra, text) in COUNTERS.items():
            if name not in families:
                families[name] = family(name=name, description=text, kind=family.COUNTER)
            self._counters[key] = families[name].Metric(labels={**labels, **extra})
        self._published: dict = {}
        self._lock = threading.Lock()

    def publish(self, stats: dict) -> None:
        with self._lock:
            self._live.set(stats["live"])
            for key, metric in self._counters.items():
                delta = stats.get(key, 0) - self._published.get(key, 0)
                if delta:
                    metric.increment(delta)
                    self._published[key] = stats.get(key, 0)


class TritonPythonModel:
    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        import lstmrt
        self._pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        session = lstmrt.InferenceSession(path, backend=params.get("lstmrt_backend", "auto"))
        self._interface = served_interface(session)
        idle = float(params.get("lstmrt_idle_timeout_s", "60"))
        self._sequences = LiveSequences(session, idle)
        self._metrics = _Metrics(pb_utils, {"model": args["model_name"], "instance": args["model_instance_name"]})
        self._metrics.publish(self._sequences.stats())
        self._stop = threading.Event()
        # Triton does not tell an Oldest-strategy model that a sequence timed out: sweep for it.
        # The same thread publishes the metrics (each update is a round trip to the server,
        # too dear for every execution).
        self._sweeper = threading.Thread(target=self._sweep, args=(min(max(idle / 4, 0.05), PUBLISH_EVERY_S),),
                                         name="lstmrt-idle-sweep", daemon=True)
        self._sweeper.start()

    def _sweep(self, every: float) -> None:
        published = None
        while not self._stop.wait(every):
            self._sequences.sweep()
            stats = self._sequences.stats()
            if stats != published:
                self._metrics.publish(stats)
                published = stats

    def execute(self, requests):
        chunks, errors = [], {}
        for i, request in enumerate(requests):
            try:
                chunks.append((i, self._decode(request)))
            except InputError as e:
                errors[i] = e
        results = self._sequences.step([c for _, c in chunks])
        outcome = dict(errors)
        outcome.update({i: r for (i, _), r in zip(chunks, results)})
        return [self._response(outcome[i]) for i in range(len(requests))]

    def _control(self, request, name: str) -> int:
        return int(self._pb.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0])

    def _decode(self, request) -> Chunk:
        chunk = Chunk(self._control(request, "CORRID"), bool(self._control(request, "START")),
                      bool(self._control(request, "END")), None)
        given = {}
        for t in self._interface.inputs:
            tensor = self._pb.get_input_tensor_by_name(request, t.name)
            if tensor is not None:
                given[t.name] = (t, tensor.as_numpy())
        missing = [t.name for t in self._interface.inputs if t.name not in given]
        if given and missing:
            raise InputError(f"missing input(s) {missing}; every chunk carries "
                             f"{[t.name for t in self._interface.inputs]}")
        if given:
            bad = [n for n, (_, v) in given.items() if v.shape[:1] != (1,)]
            if bad:
                raise InputError(f"input(s) {bad} have batch {given[bad[0]][1].shape[0]}: a request carries one "
                                 f"sequence's chunk, batch 1 (shape [1, {', '.join(map(str, given[bad[0]][0].dims))}])")
            chunk.feed = {n: t.to_model(v) for n, (t, v) in given.items()}
        return chunk

    def _response(self, result):
        pb = self._pb
        if isinstance(result, Exception):
            return pb.InferenceResponse(error=pb.TritonError(f"{type(result).__name__}: {result}"))
        tensors = [pb.Tensor(t.name, t.to_served(np.asarray(v))) for t, v in zip(self._interface.outputs, result)]
        return pb.InferenceResponse(output_tensors=tensors)

    def finalize(self):
        self._stop.set()
        self._sweeper.join(timeout=5)
