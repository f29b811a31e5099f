"""Streams: a session's model run chunk after chunk, recurrent state carried inside.

This is what Keras' stateful=True gives, for any framework's model: feed a
sequence in any split into chunks and get what one whole call returns.  The
state lives where the backend keeps it (on the GPU for onnxruntime CUDA).
"""
from __future__ import annotations

import numpy as np

from .errors import StreamError
from .model import zeros_for
from .session import _check_value
from .state_pairs import batch_axes, streaming_pairs
from .stream_limits import check_chunk, chunk_rule, refuse_if_not_streamable


class Stream:
    def __init__(self, session, state: dict | None = None):
        self._session = session
        self._backend = session._backend
        model = session.model
        refuse_if_not_streamable(model)   # an exporter's recorded reason (a layer that looks ahead)
        self._chunk_rule = chunk_rule(model)
        self.pairs = streaming_pairs(model, state)
        self._state: dict = {}
        self._outputs = [o.name for o in model.outputs if o.name not in self.pairs.values()]
        self._batch_axes = batch_axes(model)
        from .fastpath import CellFastPath
        self._fast = CellFastPath.detect(self._backend, model, self.pairs)

    @property
    def state(self) -> dict:
        """{state input name: numpy array} as of the last call; empty before the first."""
        return {k: np.array(self._backend.to_host(v)) for k, v in self._state.items()}

    def set_state(self, state: dict) -> None:
        """Replace some or all of the carried state (e.g. to resume a saved stream)."""
        updated = dict(self._state)   # a new dict: the fast path recognises its own by identity
        for name, value in state.items():
            if name not in self.pairs:
                raise StreamError(f"'{name}' is not a state input of this stream; its state inputs are "
                                  f"{list(self.pairs)}")
            updated[name] = self._backend.from_host(_check_value(self._session.model.input(name), value).copy())
        self._state = updated

    def reset(self) -> None:
        """Forget the carried state: the next call starts from zeros."""
        self._state = {}

    def _zero_state(self, name: str, feed: dict) -> np.ndarray:
        model = self._session.model
        info = model.input(name)
        dims = {}
        for other in model.inputs:
            if other.name in feed and other.shape is not None:
                dims.update({d: n for d, n in zip(other.shape, feed[other.name].shape) if isinstance(d, str)})
        zeros = zeros_for(info, dims)
        unresolved = [d for d in (info.shape or []) if not (isinstance(d, int) and d > 0) and d not in dims]
        if zeros is None and len(unresolved) == 1:
            # the one unnamed dim of a state is its batch; read the batch from a streamed input
            batches = {feed[i].shape[a] for i, a in self._batch_axes.items() if i in feed and feed[i].ndim > a}
            if len(batches) == 1:
                dims[unresolved[0]] = batches.pop()
                zeros = zeros_for(info, dims)
        if zeros is None:
            raise StreamError(f"cannot tell the shape of state '{name}' {info.shape} from the inputs; "
                              "give it once with set_state() or in the first run()'s feed")
        return zeros

    def run(self, input_feed: dict, output_names=None) -> list:
        """Run one chunk; returns the non-state outputs (or those named), in graph order.
        A state input given in the feed replaces the carried one for this call."""
        if self._chunk_rule is not None and isinstance(input_feed, dict):
            check_chunk(self._chunk_rule, input_feed)   # strided layers: whole strides per chunk
        fast = self._fast
        if fast is not None and output_names is None and len(input_feed) == 1:
            done = fast.try_run(input_feed.get(fast.x_name), self._state)
            if done is not None:
                results, self._state = done
                return results
        feed = self._session.check_feed(input_feed, optional=self.pairs)
        streamed = {k: v for k, v in feed.items() if k not in self.pairs}
        state = {}
        for name in self.pairs:
            if name in feed:
                state[name] = self._backend.from_host(feed[name])
            elif name in self._state:
                state[name] = self._state[name]
            else:
                state[name] = self._backend.from_host(self._zero_state(name, feed))
        wanted = self._outputs if output_names is None else self._session._output_names(output_names)
        results, new_state = self._backend.run_stateful(streamed, state, self.pairs, wanted)
        for inp, out in self.pairs.items():
            before, after = self._backend.shape_of(state[inp]), self._backend.shape_of(new_state[inp])
            if tuple(before) != tuple(after):
                raise StreamError(f"state output '{out}' came out {list(after)} but state input "
                                  f"'{inp}' is {list(before)}; they cannot be carried across calls")
        self._state = new_state
        return results
