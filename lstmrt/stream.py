"""Streams: a session's model run chunk after chunk, recurrent state carried inside.

This is what Keras' stateful=True gives, for any framework's model: feed a
sequence in any split into chunks and get what one whole call returns.  The
state lives where the backend keeps it (on the GPU for onnxruntime CUDA).
"""
from __future__ import annotations

import functools
import threading
from collections.abc import Mapping

import numpy as np

from .errors import InputError, LstmrtError, StreamError
from .model import zeros_for
from .session import _check_value
from .state_pairs import batch_axes, streaming_pairs


def serialised(method):
    """Calls on one stream (or group) from many threads take turns: each call reads the state
    the previous one left, so no update is lost and no state is torn."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


def _check_mapping(value, what: str) -> None:
    if not isinstance(value, Mapping):
        raise InputError(f"{what} must be a dict of name -> numpy array, got {type(value).__name__}")


class Stream:
    def __init__(self, session, state: dict | None = None):
        self._lock = threading.Lock()
        self._session = session
        self._backend = session._backend
        model = session.model
        self.pairs = streaming_pairs(model, state)
        self._state: dict = {}
        self._outputs = [o.name for o in model.outputs if o.name not in self.pairs.values()]
        self._batch_axes = batch_axes(model)
        from .fastpath import CellFastPath
        from .session import fast_path_allowed
        self._fast = CellFastPath.detect(self._backend, model, self.pairs) if fast_path_allowed(model) else None

    @property
    @serialised
    def state(self) -> dict:
        """{state input name: numpy array} as of the last call; empty before the first."""
        return {k: np.array(self._backend.to_host(v)) for k, v in self._state.items()}

    @serialised
    def set_state(self, state: dict) -> None:
        """Replace some or all of the carried state (e.g. to resume a saved stream)."""
        _check_mapping(state, "set_state()'s state")
        updated = dict(self._state)   # a new dict: the fast path recognises its own by identity
        for name, value in state.items():
            if name not in self.pairs:
                raise StreamError(f"'{name}' is not a state input of this stream; its state inputs are "
                                  f"{list(self.pairs)}")
            updated[name] = self._backend.from_host(_check_value(self._session.model.input(name), value).copy())
        self._state = updated

    @serialised
    def reset(self) -> None:
        """Forget the carried state: the next call starts from zeros."""
        self._state = {}

    def _batch_change(self, feed: dict, state: dict) -> StreamError | None:
        """After a failed call: a StreamError if the carried state's shape is not what this feed
        needs (the batch changed mid-stream), since the backend's message never says reset()."""
        for name, value in state.items():
            if name in feed:
                continue
            try:
                wanted = self._zero_state(name, feed).shape
            except LstmrtError:
                continue
            have = tuple(self._backend.shape_of(value))
            if have != wanted:
                return StreamError(f"the carried state '{name}' is {list(have)} but this feed needs {list(wanted)} "
                                   "(did the batch change?); reset() the stream, or set_state() for the new batch")
        return None

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
        A state input given in the feed replaces the carried one for this call.
        Calls from several threads take turns (the lock; a `with` here, not @serialised, which
        cost the bare-cell step 0.3 us)."""
        with self._lock:
            return self._run(input_feed, output_names)

    def _run(self, input_feed: dict, output_names) -> list:
        if type(input_feed) is not dict:
            _check_mapping(input_feed, "stream.run()'s input_feed")
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
        try:
            results, new_state = self._backend.run_stateful(streamed, state, self.pairs, wanted)
        except LstmrtError as e:
            raise self._batch_change(feed, state) or e
        for inp, out in self.pairs.items():
            before, after = self._backend.shape_of(state[inp]), self._backend.shape_of(new_state[inp])
            if tuple(before) != tuple(after):
                raise StreamError(f"state output '{out}' came out {list(after)} but state input "
                                  f"'{inp}' is {list(before)}; they cannot be carried across calls")
        self._state = new_state
        return results
