"""Streams: a session's model run chunk after chunk, recurrent state carried inside.

This is what Keras' stateful=True gives, for any framework's model: feed a
sequence in any split into chunks and get what one whole call returns.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError, StreamError
from .model import zeros_for
from .session import _check_value
from .state_pairs import batch_axes, streaming_pairs


class Stream:
    def __init__(self, session, state: dict | None = None):
        self._session = session
        model = session.model
        self.pairs = streaming_pairs(model, state)
        self._state: dict = {}
        self._outputs = [o.name for o in model.outputs if o.name not in self.pairs.values()]
        self._batch_axes = batch_axes(model)

    @property
    def state(self) -> dict:
        """{state input name: array} as of the last call; empty before the first."""
        return {k: v.copy() for k, v in self._state.items()}

    def set_state(self, state: dict) -> None:
        """Replace some or all of the carried state (e.g. to resume a saved stream)."""
        for name, value in state.items():
            if name not in self.pairs:
                raise StreamError(f"'{name}' is not a state input of this stream; its state inputs are "
                                  f"{list(self.pairs)}")
            self._state[name] = _check_value(self._session.model.input(name), value).copy()

    def reset(self) -> None:
        """Forget the carried state: the next call starts from zeros."""
        self._state = {}

    def _zero_state(self, name: str, feed: dict) -> np.ndarray:
        model = self._session.model
        info = model.input(name)
        dims = {}
        for other in model.inputs:
            if other.name in feed and other.shape is not None and isinstance(feed[other.name], np.ndarray):
                dims.update({d: n for d, n in zip(other.shape, feed[other.name].shape) if isinstance(d, str)})
        zeros = zeros_for(info, dims)
        unresolved = [d for d in (info.shape or []) if not (isinstance(d, int) and d > 0) and d not in dims]
        if zeros is None and len(unresolved) == 1:
            # the one unnamed dim of a state is its batch; read the batch from a streamed input
            batches = {feed[i].shape[a] for i, a in self._batch_axes.items()
                       if isinstance(feed.get(i), np.ndarray) and feed[i].ndim > a}
            if len(batches) == 1:
                dims[unresolved[0]] = batches.pop()
                zeros = zeros_for(info, dims)
        if zeros is None:
            raise StreamError(f"cannot tell the shape of state '{name}' {info.shape} from the inputs; "
                              "give it once with set_state() or in the first run()'s feed")
        return zeros

    def run(self, input_feed: dict, output_names=None) -> list:
        """Run one chunk; returns the non-state outputs (or those named), in graph order."""
        if not isinstance(input_feed, dict):
            raise InputError(f"input_feed must be a dict of name -> numpy array, got {type(input_feed).__name__}")
        feed = dict(input_feed)
        for name in self.pairs:
            if name not in feed:   # a state given in the feed overrides the carried one
                feed[name] = self._state[name] if name in self._state else self._zero_state(name, feed)
        wanted = self._outputs if output_names is None else list(output_names)
        names = wanted + [o for o in self.pairs.values() if o not in wanted]
        results = dict(zip(names, self._session.run(names, feed)))
        for inp, out in self.pairs.items():
            if results[out].shape != feed[inp].shape:
                raise StreamError(f"state output '{out}' came out {list(results[out].shape)} but state input "
                                  f"'{inp}' is {list(feed[inp].shape)}; they cannot be carried across calls")
        self._state = {inp: results[out] for inp, out in self.pairs.items()}
        return [results[n] for n in wanted]
