"""Stream groups: many independent streams of one session, advanced together.

A server holding 64 live streams runs one batch-64 call per step instead of 64
batch-1 calls.  Each member is one sequence (batch 1); members join and leave at
any time, keep their own state, and get exactly what they would get streaming alone.
The members' states live stacked, one row each, so a step gathers nothing when
every member runs.
"""
from __future__ import annotations

import itertools
import threading

import numpy as np

from .errors import InputError, StreamError
from .stream import Stream, serialised


def _rows(axis: int, index) -> tuple:
    return (slice(None),) * axis + (index,)


def _split(array: np.ndarray, axis: int) -> list:
    """Views of each index along `axis`, that axis kept with size 1 (numpy iterates, not Python)."""
    return list(np.moveaxis(np.expand_dims(array, axis), axis + 1, 0))


class StreamGroup:
    def __init__(self, session, state: dict | None = None):
        self._lock = threading.Lock()
        self._session = session
        self._template = Stream(session, state)      # checks the model can stream; finds the pairs
        self.pairs = self._template.pairs
        self._outputs = [o.name for o in session.model.outputs if o.name not in self.pairs.values()]
        self._batch_dim = self._batch_dim_name()
        self._keys = itertools.count()
        self._order: list[int] = []           # member keys, in row order
        self._pending: dict[int, dict] = {}   # state given to add() before the rows exist
        # state input -> stacked array, one row per member; replaced, never changed in place
        self._states: dict | None = None
        self._state_axis: dict = {}

    # -- membership ----------------------------------------------------------------
    @serialised
    def add(self, state: dict | None = None) -> int:
        """A new member, starting from zeros (or from `state`, as a lone stream's .state gives it)."""
        key = next(self._keys)
        checked = self._checked_state(state) if state else {}
        self._order.append(key)
        if self._states is not None:
            self._states = {name: np.concatenate(
                [stacked, checked.get(name, np.zeros_like(stacked[_rows(self._state_axis[name], slice(0, 1))]))],
                axis=self._state_axis[name]) for name, stacked in self._states.items()}
        elif checked:
            self._pending[key] = checked
        return key

    @serialised
    def remove(self, key: int) -> None:
        row = self._row(key)
        self._order.pop(row)
        self._pending.pop(key, None)
        if not self._order:
            self._states = None     # no rows left to shape the next member's: it starts afresh
        elif self._states is not None:
            self._states = {n: np.delete(a, row, axis=self._state_axis[n]) for n, a in self._states.items()}

    def __len__(self) -> int:
        return len(self._order)

    @serialised
    def state(self, key: int) -> dict:
        """The member's state, shaped as a lone stream's; empty before the group first ran."""
        row = self._row(key)
        if self._states is None:
            return {k: v.copy() for k, v in self._pending.get(key, {}).items()}
        return {n: a[_rows(self._state_axis[n], slice(row, row + 1))].copy() for n, a in self._states.items()}

    def _row(self, key: int) -> int:
        try:
            return self._order.index(key)
        except ValueError:
            raise StreamError(f"no member {key!r} in this stream group (members: {self._order})") from None

    def _checked_state(self, state: dict) -> dict:
        probe = Stream(self._session, self.pairs)
        probe.set_state(state)               # the checks a lone stream makes
        return probe.state

    # -- batch axes ------------------------------------------------------------------
    def _batch_dim_name(self):
        for name, axis in self._template._batch_axes.items():
            shape = self._session.model.input(name).shape or []
            if axis < len(shape) and isinstance(shape[axis], str):
                return shape[axis]
        return None

    def _axis(self, name: str, shape: tuple, declared, size: int) -> int:
        """Batch axis of a value whose batch is `size`: traced for streamed inputs, else the named
        batch dim, else the one dynamic axis of that size (ties go to the streamed input's axis)."""
        if name in self._template._batch_axes:
            return self._template._batch_axes[name]
        if declared and self._batch_dim is not None and self._batch_dim in declared:
            return list(declared).index(self._batch_dim)
        dims = declared if declared and len(declared) == len(shape) else [None] * len(shape)
        candidates = [a for a, d in enumerate(dims) if not (isinstance(d, int) and d > 0) and shape[a] == size]
        preferred = [a for a in candidates if a in self._template._batch_axes.values()]
        if len(candidates) == 1 or len(preferred) == 1:
            return candidates[0] if len(candidates) == 1 else preferred[0]
        raise StreamError(f"cannot tell the batch axis of '{name}' (shape {list(shape)}, declared {declared}); "
                          "name its batch dimension like the streamed input's")

    # -- running -----------------------------------------------------------------------
    def _gather_feeds(self, feeds: dict, keys: list) -> tuple[dict, dict]:
        """(the first member's checked feed, {input: [every member's array]}): the first is checked
        in full, the rest held to its names, dtypes and shapes (a group steps its members together)."""
        first = self._session.check_feed(feeds[keys[0]], optional=self.pairs)
        if any(n in first for n in self.pairs):
            raise InputError("a group carries its members' state; give it with add(state=...) instead")
        try:
            columns = {n: [feeds[k][n] for k in keys] for n in first}
            same = all(len(feeds[k]) == len(first) for k in keys) and all(
                {type(a) for a in arrays} == {np.ndarray} and {a.shape for a in arrays} == {first[n].shape}
                and {a.dtype for a in arrays} == {first[n].dtype} for n, arrays in columns.items())
        except (KeyError, TypeError, AttributeError):
            same = False
        if not same:
            bad = next(k for k in keys if not isinstance(feeds[k], dict) or feeds[k].keys() != first.keys() or any(
                not isinstance(feeds[k][n], np.ndarray) or feeds[k][n].shape != v.shape or feeds[k][n].dtype != v.dtype
                for n, v in first.items()))
            self._session.check_feed(feeds[bad], optional=self.pairs)   # names a plain mistake first
            raise InputError(f"member {bad}'s feed differs from member {keys[0]}'s in names, dtypes or shapes; "
                             "a group steps its members together, in chunks of one length")
        return first, columns

    def _init_states(self, first: dict) -> None:
        model = self._session.model
        zeros = {n: self._template._zero_state(n, first) for n in self.pairs}
        self._state_axis = {n: self._axis(n, z.shape, model.input(n).shape, 1) for n, z in zeros.items()}
        for n, z in zeros.items():
            if z.shape[self._state_axis[n]] != 1:
                raise StreamError(f"group members are single sequences; state '{n}' came out {list(z.shape)}")
        rows = [{**zeros, **self._pending.get(k, {})} for k in self._order]
        self._states = {n: np.concatenate([r[n] for r in rows], axis=self._state_axis[n]) for n in self.pairs}
        self._pending = {}

    def run(self, feeds: dict) -> dict:
        """{member key: {input: array}} -> {member key: [non-state outputs]}, one model call for all.
        Calls from several threads take turns."""
        with self._lock:
            return self._run(feeds)

    def _run(self, feeds: dict) -> dict:
        if not isinstance(feeds, dict):
            raise InputError(f"group.run() takes a dict of member key -> feed dict, got {type(feeds).__name__}")
        if not feeds:
            return {}
        keys = list(feeds)
        everyone = keys == self._order     # the common case: every member, in row order
        if everyone:
            rows = range(len(keys))
        else:
            where = {k: i for i, k in enumerate(self._order)}
            rows = [where[k] if k in where else self._row(k) for k in keys]
        first, columns = self._gather_feeds(feeds, keys)
        streamed = [n for n in first if n in self._template._batch_axes]
        if not streamed:
            raise StreamError("no streamed input with a traceable batch axis; a group needs one")
        if first[streamed[0]].shape[self._template._batch_axes[streamed[0]]] != 1:
            raise InputError("each group member is one sequence: its inputs have batch 1")
        if self._states is None:
            self._init_states(first)
        batched = {n: np.concatenate(arrays, axis=self._template._batch_axes[n]) for n, arrays in columns.items()}
        for n, stacked in self._states.items():
            batched[n] = stacked if everyone else np.take(stacked, rows, axis=self._state_axis[n])
        names = self._outputs + list(self.pairs.values())
        results = dict(zip(names, self._session.run(names, batched)))
        if everyone:
            self._states = {inp: results[out] for inp, out in self.pairs.items()}
        else:
            self._states = {inp: stacked.copy() for inp, stacked in self._states.items()}
            for inp, out in self.pairs.items():
                self._states[inp][_rows(self._state_axis[inp], rows)] = results[out]
        model, count = self._session.model, len(keys)
        pieces = [_split(results[n], self._axis(n, results[n].shape, model.output(n).shape, count))
                  for n in self._outputs]
        return dict(zip(keys, map(list, zip(*pieces)))) if pieces else {k: [] for k in keys}
