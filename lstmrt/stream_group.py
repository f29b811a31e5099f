"""Stream groups: many independent streams of one session, advanced together.

A server holding 64 live streams runs one batch-64 call per step instead of 64
batch-1 calls.  Members join and leave at any time; each keeps its own state, and
each gets exactly what it would get streaming alone.
"""
from __future__ import annotations

import itertools

import numpy as np

from .errors import InputError, StreamError
from .stream import Stream


class StreamGroup:
    def __init__(self, session, state: dict | None = None):
        self._session = session
        self._template = Stream(session, state)      # checks the model can stream; finds the pairs
        self.pairs = self._template.pairs
        model = session.model
        self._outputs = [o.name for o in model.outputs if o.name not in self.pairs.values()]
        self._batch_dim = self._batch_dim_name()
        self._members: dict[int, dict] = {}
        self._keys = itertools.count()

    # -- membership ----------------------------------------------------------------
    def add(self, state: dict | None = None) -> int:
        """A new member, starting from zeros (or from `state`); returns its key."""
        key = next(self._keys)
        self._members[key] = {}
        if state:
            self.set_state(key, state)
        return key

    def remove(self, key: int) -> None:
        self._member(key)
        del self._members[key]

    def __len__(self) -> int:
        return len(self._members)

    def state(self, key: int) -> dict:
        return {k: v.copy() for k, v in self._member(key).items()}

    def set_state(self, key: int, state: dict) -> None:
        probe = Stream(self._session, self.pairs)
        probe.set_state(state)               # the same checks a lone stream makes
        self._member(key).update(probe.state)

    def _member(self, key: int) -> dict:
        if key not in self._members:
            raise StreamError(f"no member {key!r} in this stream group (members: {sorted(self._members)})")
        return self._members[key]

    # -- batch axes ------------------------------------------------------------------
    def _batch_dim_name(self):
        axes = self._template._batch_axes
        for name, axis in axes.items():
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
    def run(self, feeds: dict) -> dict:
        """{member key: {input: array}} -> {member key: [non-state outputs]}, one model call for all."""
        if not feeds:
            return {}
        model, keys = self._session.model, list(feeds)
        checked = {k: self._session.check_feed(feeds[k], optional=self.pairs) for k in keys}
        for k in keys:
            state = self._member(k)
            for name in self.pairs:
                if name not in checked[k]:
                    checked[k][name] = state[name] if name in state else self._template._zero_state(name, checked[k])
        first = checked[keys[0]]
        streamed = [n for n in first if n in self._template._batch_axes]
        if not streamed:
            raise StreamError("no streamed input with a traceable batch axis; a group needs one")
        axis0 = self._template._batch_axes[streamed[0]]
        sizes = [checked[k][streamed[0]].shape[axis0] for k in keys]
        batched = {}
        for name in first:
            parts = [checked[k][name] for k in keys]
            axis = self._axis(name, parts[0].shape, model.input(name).shape, sizes[0])
            try:
                batched[name] = np.concatenate(parts, axis=axis)
            except ValueError:
                raise InputError(f"members' '{name}' differ beyond the batch axis ({[list(p.shape) for p in parts]}); "
                                 "a group steps its members together, in chunks of one length") from None
        names = self._outputs + list(self.pairs.values())
        results = dict(zip(names, self._session.run(names, batched)))
        total, split_at = sum(sizes), np.cumsum(sizes)[:-1]
        pieces = {}
        for name, value in results.items():
            axis = self._axis(name, value.shape, model.output(name).shape, total)
            pieces[name] = np.split(value, split_at, axis=axis)
        out = {}
        for i, k in enumerate(keys):
            self._members[k] = {inp: pieces[o][i] for inp, o in self.pairs.items()}
            out[k] = [pieces[n][i] for n in self._outputs]
        return out
