"""Stream groups: many independent streams of one session, advanced together.

A server holding 64 live streams runs one batch-64 call per step instead of 64
batch-1 calls.  Each member is one sequence (batch 1); members join and leave at
any time, keep their own state, and get exactly what they would get streaming alone.
The members' states live in banks, one row per member: a call gathers the rows of the
members it steps and scatters their new state back (in C, inside the compiled program,
on the native backend), so joining, leaving and stepping any subset moves no other row.
"""
from __future__ import annotations

import itertools

import numpy as np

from .compiler import ROWS, Banked
from .errors import InputError, StreamError, UnsupportedModelError
from .locks import lock_of, new_lock
from .state_shapes import inferred_output_shapes
from .stream import Stream, _OneDimUnknown, serialised
from .stream_limits import check_chunk


def _rows(axis: int, index) -> tuple:
    return (slice(None),) * axis + (index,)


def _split(array: np.ndarray, axis: int | None, count: int) -> list:
    """Views of each index along `axis`, that axis kept with size 1 (numpy iterates, not Python);
    axis None: one member, the whole array."""
    if axis is None:
        return [array] * count
    kept = array[(slice(None),) * (axis + 1) + (None,)]      # a new axis of 1 after `axis`
    return list(kept.transpose((axis,) + tuple(a for a in range(kept.ndim) if a != axis)))


def _capacity(members: int) -> int:
    """Rows of a bank for this many members: a power of two, so that programs (compiled per bank
    shape) change only when the group outgrows its banks or shrinks to a quarter of them."""
    return 1 << max(2, (members - 1).bit_length())


class StreamGroup:
    def __init__(self, session, state: dict | None = None):
        self._lock = new_lock(self)
        self._session = session
        self._template = Stream(session, state)      # checks the model can stream; finds the pairs
        self.pairs = self._template.pairs
        self._outputs = [o.name for o in session.model.outputs if o.name not in self.pairs.values()]
        self._batch_dim = self._batch_dim_name()
        self._batch_axes = self._input_axes()
        self._keys = itertools.count()
        self._row_of: dict[int, int] = {}     # member key -> its row in the banks, in joining order
        self._pending: dict[int, dict] = {}   # state given to add() before the banks exist
        self._banks: dict | None = None       # state input -> array, one row per member (or free)
        self._free: list[int] = []            # rows of the banks no member holds
        self._state_axis: dict = {}
        self._split_axes: dict = {}           # (output shapes, members) -> each output's batch axis
        programs = getattr(session._backend, "group_programs", None)
        self._programs = programs(self._outputs) if programs is not None else None

    # -- membership ----------------------------------------------------------------
    @serialised
    def add(self, state: dict | None = None) -> int:
        """A new member, starting from zeros (or from `state`, as a lone stream's .state gives it)."""
        checked = self._checked_state(state) if state else {}
        key = next(self._keys)
        if self._banks is None:
            self._row_of[key] = -1         # rows are handed out when the banks are made
            if checked:
                self._pending[key] = checked
            return key
        if not self._free:
            self._resize(_capacity(len(self._row_of) + 1))
        self._put_row(self._free[-1], checked)
        self._row_of[key] = self._free.pop()
        return key

    def _put_row(self, row: int, state: dict) -> None:
        """A member's row of every bank: its state where given, else zeros."""
        for name, bank in self._banks.items():
            part = bank[_rows(self._state_axis[name], slice(row, row + 1))]
            value = state.get(name)
            if value is not None and value.shape != part.shape:
                raise StreamError(f"state '{name}' of a group member is {list(part.shape)} (one sequence); "
                                  f"got {list(value.shape)}")
            part[...] = 0 if value is None else value

    @serialised
    def remove(self, key: int) -> None:
        row = self._row(key)
        del self._row_of[key]
        self._pending.pop(key, None)
        if not self._row_of:
            self._banks = None     # no rows left to shape the next member's: it starts afresh
            self._free = []
        elif self._banks is not None:
            self._free.append(row)
            if len(self._row_of) <= self._rows_held() // 4 and self._rows_held() > 4:
                self._resize(_capacity(len(self._row_of)))

    def __len__(self) -> int:
        return len(self._row_of)

    @serialised
    def state(self, key: int) -> dict:
        """The member's state, shaped as a lone stream's; empty before the group first ran."""
        row = self._row(key)
        if self._banks is None:
            return {k: v.copy() for k, v in self._pending.get(key, {}).items()}
        return {n: a[_rows(self._state_axis[n], slice(row, row + 1))].copy() for n, a in self._banks.items()}

    def _row(self, key: int) -> int:
        try:
            return self._row_of[key]
        except (KeyError, TypeError):
            raise StreamError(f"no member {key!r} in this stream group (members: {list(self._row_of)})") from None

    def _rows_held(self) -> int:
        name, bank = next(iter(self._banks.items()))
        return bank.shape[self._state_axis[name]]

    def _set_banks(self, banks: dict) -> None:
        self._banks = banks
        self._banked = Banked(tuple((n, self.pairs[n], self._state_axis[n], bank.shape) for n, bank in banks.items()))

    def _resize(self, capacity: int) -> None:
        """New banks of `capacity` rows, the members' rows packed at the front in joining order."""
        keys = list(self._row_of)
        old = np.array([self._row_of[k] for k in keys], np.int64)
        banks = {}
        for name, bank in self._banks.items():
            axis = self._state_axis[name]
            shape = list(bank.shape)
            shape[axis] = capacity
            banks[name] = np.zeros(shape, bank.dtype)
            banks[name][_rows(axis, slice(0, len(keys)))] = np.take(bank, old, axis=axis)
        self._set_banks(banks)
        self._row_of = dict(zip(keys, range(len(keys))))
        self._free = list(range(capacity - 1, len(keys) - 1, -1))   # popped from the end: lowest first

    def _checked_state(self, state: dict) -> dict:
        probe = Stream(self._session, self.pairs)
        probe.set_state(state)               # the checks a lone stream makes
        checked = probe.state
        for name, value in checked.items():  # one sequence, where the declared batch dim says where
            declared = list(self._session.model.input(name).shape or [])
            axis = declared.index(self._batch_dim) if self._batch_dim is not None and self._batch_dim in declared \
                else None
            if axis is not None and len(declared) == value.ndim and value.shape[axis] != 1:
                raise StreamError(f"state '{name}' of a group member is one sequence (batch 1 on axis {axis}); "
                                  f"got {list(value.shape)}")
        return checked

    # -- batch axes ------------------------------------------------------------------
    def _batch_dim_name(self):
        """The batch dim's name: a traced batch axis's, else the one dim name that every state
        input and some streamed input share (a model whose recurrence is written out in MatMuls)."""
        for name, axis in self._template._batch_axes.items():
            shape = self._session.model.input(name).shape or []
            if axis < len(shape) and isinstance(shape[axis], str):
                return shape[axis]
        model = self._session.model
        named = lambda info: {d for d in info.shape or [] if isinstance(d, str)}  # noqa: E731
        shared = set.intersection(*[named(model.input(n)) for n in self.pairs]) if self.pairs else set()
        streamed = set().union(*[named(i) for i in model.inputs if i.name not in self.pairs])
        candidates = shared & streamed
        return candidates.pop() if len(candidates) == 1 else None

    def _input_axes(self) -> dict:
        """Each streamed input's batch axis: traced, else where it has the batch dim's name, else
        (nothing traced, no shared name: a Loop that tf2onnx made of a masked LSTM) its first
        axis when that is dynamic, ONNX's usual batch position.  A state whose rows then do not
        line up fails the call on its shape; it is never silently mixed."""
        traced = dict(self._template._batch_axes)
        axes = dict(traced)
        for info in self._session.model.inputs:
            if info.name in axes or info.name in self.pairs or not info.shape:
                continue
            if self._batch_dim in info.shape:
                axes[info.name] = list(info.shape).index(self._batch_dim)
            elif not traced and self._batch_dim is None and not (isinstance(info.shape[0], int) and info.shape[0] > 0):
                axes[info.name] = 0
        return axes

    def _axis(self, name: str, shape: tuple, declared, size: int) -> int:
        """Batch axis of a value whose batch is `size`: traced for streamed inputs, else the named
        batch dim, else the one dynamic axis of that size (ties go to the streamed input's axis)."""
        if name in self._batch_axes:
            return self._batch_axes[name]
        if declared and self._batch_dim is not None and self._batch_dim in declared:
            return list(declared).index(self._batch_dim)
        dims = declared if declared and len(declared) == len(shape) else [None] * len(shape)
        candidates = [a for a, d in enumerate(dims) if not (isinstance(d, int) and d > 0) and shape[a] == size]
        preferred = [a for a in candidates if a in self._batch_axes.values()]
        if len(candidates) == 1 or len(preferred) == 1:
            return candidates[0] if len(candidates) == 1 else preferred[0]
        raise StreamError(f"cannot tell the batch axis of '{name}' (shape {list(shape)}, declared {declared}); "
                          "name its batch dimension like the streamed input's")

    # -- running -----------------------------------------------------------------------
    def _gather_feeds(self, feeds: dict, keys: list) -> tuple[dict, dict]:
        """(the first member's checked feed, {input: the members' arrays joined along its batch
        axis}): the first is checked in full, the rest held to its names, dtypes and shapes (a
        group steps its members together)."""
        first = self._session.check_feed(feeds[keys[0]], optional=self.pairs)
        if any(n in first for n in self.pairs):
            raise InputError("a group carries its members' state; give it with add(state=...) instead")
        axes = self._batch_axes
        for n in first:
            if n not in axes and not self._same_everywhere(feeds, keys, n, first[n]):
                raise InputError(f"input '{n}' has no batch axis (a setting such as a sample rate): every member "
                                 "of one group call must give it the same value")
        joined = self._joined(feeds, keys, first)
        if joined is None:     # a member's feed differs, or needs converting (byte order): check each
            checked = {k: self._session.check_feed(feeds[k], optional=self.pairs) for k in keys}
            joined = self._joined(checked, keys, first)
            if joined is None:
                bad = next(k for k in keys if checked[k].keys() != first.keys() or any(
                    checked[k][n].shape != v.shape or checked[k][n].dtype != v.dtype for n, v in first.items()))
                raise InputError(f"member {bad}'s feed differs from member {keys[0]}'s in names, dtypes or "
                                 "shapes; a group steps its members together, in chunks of one length")
        return first, joined

    def _joined(self, feeds: dict, keys: list, first: dict) -> dict | None:
        """{input: the members' arrays joined along its batch axis (C order)}, or None where a
        member's feed has other names, shapes or dtypes than `first`."""
        axes = self._batch_axes
        try:
            if {len(feed) for feed in feeds.values()} != {len(first)}:
                return None
            joined = {}
            for n, value in first.items():
                if n not in axes:
                    joined[n] = value
                    continue
                arrays = [feeds[k][n] for k in keys]
                if {a.shape for a in arrays} != {value.shape}:
                    return None
                # casting="no": a member of another dtype fails here instead of being converted
                joined[n] = np.ascontiguousarray(np.concatenate(arrays, axis=axes[n], dtype=value.dtype,
                                                                casting="no"))
            return joined
        except (KeyError, TypeError, AttributeError, ValueError):
            return None

    def _member_zeros(self, name: str, first: dict) -> np.ndarray:
        """A member's zero state: as a lone stream's, a dim nothing tells being the member's batch
        of 1 (a wrong guess fails the call: the state output comes out another shape)."""
        try:
            return self._template._zero_state(name, first)
        except _OneDimUnknown as unknown:
            shape = list(unknown.shape)
            shape[unknown.axis] = 1
            return np.zeros(shape, unknown.dtype)

    @staticmethod
    def _same_everywhere(feeds: dict, keys: list, name: str, value: np.ndarray) -> bool:
        """Every member gives `name` this value (compared by bytes: np.array_equal costs ~5 us a
        member, and NaN settings would never compare equal)."""
        try:
            arrays = [feeds[k][name] for k in keys]
            return all(a.shape == value.shape and a.dtype == value.dtype for a in arrays) and \
                {a.tobytes() for a in arrays} == {value.tobytes()}
        except (KeyError, TypeError, AttributeError):
            return False

    def _init_states(self, first: dict) -> None:
        model = self._session.model
        zeros = {n: self._member_zeros(n, first) for n in self.pairs}
        self._state_axis = {n: self._axis(n, z.shape, model.input(n).shape, 1) for n, z in zeros.items()}
        for n, z in zeros.items():
            if z.shape[self._state_axis[n]] != 1:
                raise StreamError(f"group members are single sequences; state '{n}' came out {list(z.shape)}")
        for key, given in self._pending.items():     # all checked before anything changes
            for name, value in given.items():
                if value.shape != zeros[name].shape:
                    raise StreamError(f"state '{name}' given to member {key} is {list(value.shape)}, but a group "
                                      f"member is one sequence, {list(zeros[name].shape)} with this feed; remove "
                                      "the member and add it again with such a state")
        capacity = _capacity(len(self._row_of))
        self._set_banks({n: np.zeros(z.shape[:self._state_axis[n]] + (capacity,) + z.shape[self._state_axis[n] + 1:],
                                     z.dtype) for n, z in zeros.items()})
        self._row_of = {key: row for row, key in enumerate(self._row_of)}
        self._free = list(range(capacity - 1, len(self._row_of) - 1, -1))
        pending, self._pending = self._pending, {}
        for key, given in pending.items():
            self._put_row(self._row_of[key], given)

    def run(self, feeds: dict) -> dict:
        """{member key: {input: array}} -> {member key: [non-state outputs]}, one model call for all.
        Calls from several threads take turns."""
        with lock_of(self):
            return self._run(feeds)

    def profile(self, feeds: dict, calls: int = 100) -> list:
        """[(instruction, seconds per call)], slowest first: where the compiled program of a call
        with these members and feeds spends its time (native backend), its gathering and
        scattering of the members' state rows included.  The calls run on copies of the state:
        the members' state is left as it was."""
        with lock_of(self):
            if self._programs is None:
                raise UnsupportedModelError("profiling a group needs the native backend with compiled programs; "
                                            f"this group's session runs on {self._session.backend}")
            if not isinstance(feeds, dict) or not feeds:
                raise InputError("group.profile() takes a non-empty dict of member key -> feed dict")
            _, batched, rows = self._prepared(feeds)
            return self._programs.profile({**batched, ROWS: rows}, self._banks, self._banked, calls)

    def _run(self, feeds: dict) -> dict:
        if not isinstance(feeds, dict):
            raise InputError(f"group.run() takes a dict of member key -> feed dict, got {type(feeds).__name__}")
        if not feeds:
            return {}
        keys, batched, rows = self._prepared(feeds)
        axes: list = []

        def split_axes(shapes):     # called before the call writes any member's state
            axes[:] = self._output_axes(shapes, batched, len(keys))
        results = None
        if self._programs is not None:
            results = self._programs.step({**batched, ROWS: rows}, self._banks, self._banked, split_axes)
        if results is None:
            results = self._run_batched(batched, rows, split_axes)
        pieces = [_split(r, axis, len(keys)) for r, axis in zip(results, axes)]
        return dict(zip(keys, map(list, zip(*pieces)))) if pieces else {k: [] for k in keys}

    def _prepared(self, feeds: dict) -> tuple[list, dict, np.ndarray]:
        """(member keys, their inputs joined along the batch axes, their rows in the banks), the
        feeds checked and the banks made on the first call."""
        keys = list(feeds)
        for key in feeds.keys() - self._row_of.keys():
            self._row(key)      # a StreamError naming a key that is not a member
        first, batched = self._gather_feeds(feeds, keys)
        if self._template._chunk_rule is not None:
            check_chunk(self._template._chunk_rule, first)   # members share shapes: one check holds for all
        streamed = [n for n in first if n in self._batch_axes]
        if not streamed:
            raise StreamError("no streamed input with a traceable batch axis; a group needs one")
        if first[streamed[0]].shape[self._batch_axes[streamed[0]]] != 1:
            raise InputError("each group member is one sequence: its inputs have batch 1")
        if self._banks is None:
            self._init_states(first)
        return keys, batched, np.fromiter(map(self._row_of.__getitem__, keys), np.int64, len(keys))

    def _run_batched(self, batched: dict, rows: np.ndarray, split_axes) -> list:
        """The call on the session (a backend with no group programs, or a call that does not
        compile): the rows gathered and scattered here, the scatter after the call succeeded."""
        for n, bank in self._banks.items():
            batched[n] = np.take(bank, rows, axis=self._state_axis[n])
        names = self._outputs + list(self.pairs.values())
        results = dict(zip(names, self._session.run(names, batched)))
        for inp, out in self.pairs.items():     # all checked before any row is written
            if results[out].shape != batched[inp].shape:
                raise StreamError(f"state output '{out}' came out {list(results[out].shape)} but state input "
                                  f"'{inp}' is {list(batched[inp].shape)}; they cannot be carried across calls")
        split_axes([results[n].shape for n in self._outputs])
        for inp, out in self.pairs.items():
            self._banks[inp][_rows(self._state_axis[inp], rows)] = results[out]
        return [results[n] for n in self._outputs]

    # -- splitting the outputs ----------------------------------------------------------
    def _output_axes(self, shapes: list, batched: dict, count: int) -> list:
        """Each output's batch axis in a call of `count` members whose outputs come out `shapes`
        (None: one member, whose output is all of it)."""
        key = (tuple(map(tuple, shapes)), count)
        axes = self._split_axes.get(key)
        if axes is None:
            axes = [self._output_axis(n, tuple(s), batched, count) for n, s in zip(self._outputs, shapes)]
            if len(self._split_axes) >= 64:
                self._split_axes.clear()
            self._split_axes[key] = axes
        return axes

    def _output_axis(self, name: str, shape: tuple, batched: dict, count: int):
        """The batch dim's name where declared; else the one dynamic axis of `count` rows; else,
        among several, the one shape inference carries the members' batch to."""
        declared = self._session.model.output(name).shape
        declared = declared if declared and len(declared) == len(shape) else [None] * len(shape)
        if self._batch_dim is not None and self._batch_dim in declared:
            candidates = [list(declared).index(self._batch_dim)]
            if shape[candidates[0]] == count:
                return candidates[0]
            raise StreamError(f"output '{name}' came out {list(shape)} for {count} members, but its batch "
                              f"dimension '{self._batch_dim}' is axis {candidates[0]}")
        candidates = [a for a, d in enumerate(declared) if not (isinstance(d, int) and d > 0) and shape[a] == count]
        if len(candidates) > 1:
            traced = self._traced_axis(name, batched)
            candidates = [traced] if traced in candidates else candidates
        if len(candidates) == 1:
            return candidates[0]
        if count == 1:
            return None
        raise StreamError(f"cannot tell which axis of output '{name}' (shape {list(shape)} for {count} members, "
                          f"declared {list(declared)}) holds the members; "
                          + ("several could" if candidates else "none has their number") +
                          ": name its batch dimension like the streamed input's")

    def _traced_axis(self, name: str, batched: dict):
        """The axis of output `name` that onnx shape inference carries the members' batch to
        (a symbol in place of the batch on the inputs and state), or None."""
        symbol = "lstmrt_group_members"
        shapes = {}
        for n, value in batched.items():
            shape = list(value.shape)
            axis = self._batch_axes.get(n) if n not in self.pairs else self._state_axis[n]
            if axis is not None:
                shape[axis] = symbol
            shapes[n] = shape
        inferred = inferred_output_shapes(self._session.model, shapes).get(name) or []
        return inferred.index(symbol) if inferred.count(symbol) == 1 else None
