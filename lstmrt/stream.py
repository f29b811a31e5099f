"""Streams: a session's model run chunk after chunk, recurrent state carried inside.

This is what Keras' stateful=True gives, for any framework's model: feed a
sequence in any split into chunks and get what one whole call returns.  The
state lives where the backend keeps it (on the GPU for onnxruntime CUDA).
"""
from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from .errors import InputError, LstmrtError, StreamError
from .locks import lock_of, new_lock
from .session import _check_value
from .state_pairs import batch_axes, stream_pairs
from .state_shapes import inferred_output_shapes
from .stream_limits import check_chunk, chunk_rule, refuse_if_not_streamable


def serialised(method):
    """Calls on one stream (or group) from many threads take turns: each call reads the state
    the previous one left, so no update is lost and no state is torn."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with lock_of(self):
            return method(self, *args, **kwargs)
    return locked


def _check_mapping(value, what: str) -> None:
    if not isinstance(value, Mapping):
        raise InputError(f"{what} must be a dict of name -> numpy array, got {type(value).__name__}")


class Stream:
    def __init__(self, session, state: dict | None = None):
        self._lock = new_lock(self)
        self._session = session
        self._backend = session._backend
        model = session.model
        with lock_of(model):     # the proto, walked by one thread at a time (model.py)
            refuse_if_not_streamable(model)   # an exporter's recorded reason (a layer that looks ahead)
            self._chunk_rule = chunk_rule(model)
            self.pairing = stream_pairs(model, state)    # StatePair each: input, output, found_by, detail
            self._batch_axes = batch_axes(model)
        self.pairs = {p.input: p.output for p in self.pairing}
        self._state: dict = {}
        self._outputs = [o.name for o in model.outputs if o.name not in self.pairs.values()]
        # native: a signature this stream ran before steps on its compiled program, the state
        # kept in that program's arena between calls
        programs = getattr(self._backend, "stream_programs", None)
        self._programs = programs(self.pairs, self._outputs) if programs is not None and self.pairs else None

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
        """Zeros for state `name` at the first call: its declared shape, unknown dims resolved from
        the feed (named dims, else the traced batch axis, else shape inference with the feed's
        shapes), checked against what the model makes of this feed; StreamError if unknowable."""
        model = self._session.model
        info, out = model.input(name), self.pairs[name]
        dims = {}
        for other in model.inputs:
            if other.name in feed and other.shape is not None:
                dims.update({d: n for d, n in zip(other.shape, feed[other.name].shape) if isinstance(d, str)})
        shape = [d if isinstance(d, int) and d > 0 else dims.get(d) for d in info.shape or []]
        unresolved = [a for a, d in enumerate(shape) if d is None]
        if unresolved and len(unresolved) == 1:
            # the one unnamed dim of a state is its batch; read the batch from a streamed input
            batches = {feed[i].shape[a] for i, a in self._batch_axes.items() if i in feed and feed[i].ndim > a}
            if len(batches) == 1:
                shape[unresolved[0]] = batches.pop()
        made = self._shape_made_from(feed, out)
        if info.shape is None and made is not None:
            shape = [None] * len(made)
        if made is not None and len(made) == len(shape):
            for axis, (have, inferred) in enumerate(zip(shape, made)):
                if have is None and isinstance(inferred, int) and inferred > 0:
                    shape[axis] = inferred
                elif have is not None and isinstance(inferred, int) and inferred > 0 and have != inferred:
                    raise StreamError(
                        f"state '{name}' would start as {shape} (declared {info.shape}), but with this feed "
                        f"({self._feed_shapes(feed)}) the model makes its state output '{out}' {made}: dimension "
                        f"{axis} differs, so it could not be carried; feed a batch that fits the state, or give "
                        "the state with set_state()")
        if info.shape is not None and sum(d is None for d in shape) == 1:
            raise _OneDimUnknown(name, shape.index(None), shape, info.dtype)
        if info.shape is None or any(d is None for d in shape):
            raise StreamError(f"cannot tell the shape of state '{name}' {info.shape} from the first feed "
                              f"({self._feed_shapes(feed)}): neither named dims, the batch axis, nor shape "
                              f"inference through the graph (which gives '{out}' {made}) settle it; give it "
                              "once with set_state() or in the first run()'s feed")
        return np.zeros(shape, dtype=info.dtype)

    def _shape_made_from(self, feed: dict, out: str):
        """The state output's shape as shape inference finds it with the feed's shapes (None if not)."""
        shapes = {k: list(v.shape) for k, v in feed.items() if k not in self.pairs}
        return inferred_output_shapes(self._session.model, shapes).get(out)

    @staticmethod
    def _feed_shapes(feed: dict) -> str:
        return ", ".join(f"'{k}' {list(v.shape)}" for k, v in feed.items())

    def run(self, input_feed: dict, output_names=None) -> list:
        """Run one chunk; returns the non-state outputs (or those named), in graph order.
        A state input given in the feed replaces the carried one for this call.
        Calls from several threads take turns (the lock; a `with` here, not @serialised, which
        cost the bare-cell step 0.3 us)."""
        with lock_of(self):
            return self._run(input_feed, output_names)

    def _run(self, input_feed: dict, output_names) -> list:
        if type(input_feed) is not dict:
            _check_mapping(input_feed, "stream.run()'s input_feed")
        if self._chunk_rule is not None:
            check_chunk(self._chunk_rule, input_feed)   # strided layers: whole strides per chunk
        programs = self._programs
        if programs is not None and output_names is None and self._state and type(input_feed) is dict:
            done = programs.step(input_feed, self._state)
            if done is not None:
                results, self._state = done
                return results
        feed = self._session.check_feed(input_feed, optional=self.pairs)
        streamed = {k: v for k, v in feed.items() if k not in self.pairs}
        state, guessed = {}, []
        for name in self.pairs:
            if name in feed:
                state[name] = self._backend.from_host(feed[name])
            elif name in self._state:
                state[name] = self._state[name]
            else:
                try:
                    state[name] = self._backend.from_host(self._zero_state(name, feed))
                except _OneDimUnknown as unknown:
                    guessed.append(unknown)
        wanted = self._outputs if output_names is None else self._session._output_names(output_names)
        if guessed:
            return self._run_trying_sizes(streamed, state, guessed, wanted)
        learnable = programs is not None and output_names is None and not (feed.keys() & self.pairs.keys())
        if learnable:
            done = self._step_new_signature(programs, feed, streamed, state)
            if done is not None:
                return done
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

    def _step_new_signature(self, programs, feed: dict, streamed: dict, state: dict):
        """A signature this stream has not run: its stream program compiled and run, as every
        later call of it will be (None where it does not compile: the long path runs it and names
        any mistake)."""
        try:
            programs.learn(streamed, state)
            done = programs.step(streamed, state)
        except LstmrtError as e:
            raise self._batch_change(feed, state) or e
        if done is None:
            return None
        results, self._state = done
        return results

    def _run_trying_sizes(self, streamed: dict, state: dict, guessed: list, wanted: list) -> list:
        """The first call of a state with one dim nothing tells (e.g. [2, None, 128] beside an input
        [batch, samples] whose batch it shares through a Loop that shape inference cannot follow):
        try the feed's sizes for it, batch-like axis 0 first, and keep the call whose state output
        comes out the shape of the state it was given.  The usual guess is right, so this costs no
        extra run; a wrong size fails or makes a state of another shape, and the next is tried."""
        sizes = [n for n in dict.fromkeys([v.shape[0] for v in streamed.values() if v.ndim]
                                          + [n for v in streamed.values() for n in v.shape]) if n > 0]
        sizes = sizes[:_MAX_SIZES_TRIED]     # never 0: onnxruntime aborts the process on empty RNN state
        tried, first_error = [], None
        for size in sizes:
            trial = dict(state)
            for unknown in guessed:
                shape = list(unknown.shape)
                shape[unknown.axis] = size
                trial[unknown.name] = self._backend.from_host(np.zeros(shape, unknown.dtype))
            try:
                results, new_state = self._backend.run_stateful(streamed, trial, self.pairs, wanted)
            except Exception as e:   # noqa: BLE001 - a wrong size may fail anywhere in a backend; try the next
                tried.append(f"{size}: {type(e).__name__}")
                first_error = first_error or e
                continue
            shapes = {inp: (tuple(self._backend.shape_of(trial[inp])), tuple(self._backend.shape_of(new_state[inp])))
                      for inp in self.pairs}
            if all(before == after for before, after in shapes.values()):
                self._state = new_state
                return results
            tried.append(f"{size}: state output came out {[list(a) for _, a in shapes.values()]}")
        if first_error is not None and len(tried) == len(sizes) and all(": state output" not in t for t in tried):
            raise first_error       # no size ran at all: the feed itself is at fault, say what the backend said
        names = [u.name for u in guessed]
        raise StreamError(f"cannot tell the shape of state {names} {[u.shape for u in guessed]} from the first feed "
                          f"({self._feed_shapes(streamed)}): no named dim, batch axis or shape inference settles "
                          f"it, and none of the feed's sizes fits ({'; '.join(tried)}); give the state once with "
                          "set_state() or in the first run()'s feed")


_MAX_SIZES_TRIED = 4


class _OneDimUnknown(StreamError):
    """A zero state whose shape is known but for one dim (the batch, usually)."""

    def __init__(self, name: str, axis: int, shape: list, dtype):
        super().__init__(f"state '{name}' {shape}: dimension {axis} unknown")
        self.name, self.axis, self.shape, self.dtype = name, axis, shape, dtype
