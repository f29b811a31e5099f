"""The live sequences of one served model instance, stepped as one stream group.

Triton's sequence batcher hands an execution the requests of several sequences, each tagged
with its correlation id and START/END flags.  This class (no Triton in it, so it tests alone)
keeps one stream-group member per live sequence: START gives a sequence fresh state, END frees
it, and a sequence silent for longer than the idle timeout is freed too, as Triton forgets it.
Every request fails or succeeds alone: a bad chunk never costs another sequence its step or
its state.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ..errors import InputError, StreamError


@dataclass
class Chunk:
    """One request: a sequence's chunk in the model's own layout (batch 1), or None for an END
    that carries no data."""
    sequence: int
    start: bool
    end: bool
    feed: dict | None


class LiveSequences:
    def __init__(self, session, idle_timeout_s: float, clock=time.monotonic):
        self._session = session
        self._group = session.stream_group()
        self._pairs = self._group.pairs
        self._idle = idle_timeout_s
        self._clock = clock
        self._members: dict[int, int] = {}     # correlation id -> group member
        self._seen: dict[int, float] = {}      # correlation id -> last request time
        self._lock = threading.Lock()
        self.counts = Counter()                # started, freed_end, freed_idle, restarted, steps, chunks

    def stats(self) -> dict:
        with self._lock:
            return {"live": len(self._members), **self.counts}

    # -- lifetime ----------------------------------------------------------------------
    def _start(self, seq: int) -> None:
        if seq in self._members:
            self._remove(self._members.pop(seq))
            self.counts["restarted"] += 1
        self._members[seq] = self._group.add()
        self._seen[seq] = self._clock()
        self.counts["started"] += 1

    def _free(self, seq: int, reason: str) -> None:
        key = self._members.pop(seq, None)
        self._seen.pop(seq, None)
        if key is not None:
            self._remove(key)
            self.counts[f"freed_{reason}"] += 1

    def _remove(self, key: int) -> None:
        self._group.remove(key)
        if not len(self._group):
            # a fresh group once the last member leaves: it holds no memory, and (as of this
            # writing) a StreamGroup emptied after a run gives the next member no state row
            self._group = self._session.stream_group()

    def sweep(self) -> int:
        """Free the sequences idle past the timeout; how many went."""
        with self._lock:
            return self._sweep(self._clock())

    def _sweep(self, now: float) -> int:
        idle = [s for s, t in self._seen.items() if now - t > self._idle]
        for seq in idle:
            self._free(seq, "idle")
        return len(idle)

    # -- stepping ----------------------------------------------------------------------
    def step(self, chunks: list) -> list:
        """One execution: per chunk, its non-state outputs (model layout) or the exception that
        failed it alone.  Chunks of one sequence run in order; the rest run as one group call
        per chunk shape."""
        results: list = [None] * len(chunks)
        with self._lock:
            now = self._clock()
            for c in chunks:
                if c.sequence in self._members:
                    self._seen[c.sequence] = now     # in flight: not idle, whatever the timer says
            self._sweep(now)
            for wave in _waves(chunks):
                self._step_wave(chunks, wave, results)
            now = self._clock()
            for c in chunks:
                if c.sequence in self._members:
                    self._seen[c.sequence] = now
        return results

    def _step_wave(self, chunks: list, wave: list, results: list) -> None:
        runnable = []
        for i in wave:
            c = chunks[i]
            if c.start:
                self._start(c.sequence)
            if c.sequence not in self._members:
                results[i] = StreamError(
                    f"sequence {c.sequence} is not live on this server instance (it ended, was idle past "
                    f"{self._idle:g} s, or the server restarted); start it again with the START flag")
            elif c.feed is None:
                results[i] = [] if c.end else InputError(
                    f"a request without inputs {self._streamed()} must carry the END flag")
            else:
                error = self._check(c.feed)
                if error is None:
                    runnable.append(i)
                else:
                    results[i] = error
        for same_shape in _by_signature(chunks, runnable).values():
            self._run(chunks, same_shape, results)
        for i in wave:
            if chunks[i].end:
                self._free(chunks[i].sequence, "end")

    def _check(self, feed: dict):
        """None if the chunk may join a group call, else the error that fails it alone.  The
        rest of the feed check is the group call's own: a failed call is retried chunk by chunk."""
        given_state = [n for n in feed if n in self._pairs]
        if given_state:
            return InputError(f"{given_state} are state the server carries; send only {self._streamed()}")
        empty = [n for n, v in feed.items() if isinstance(v, np.ndarray) and v.size == 0]
        if empty:     # onnxruntime aborts the process on zero-size recurrent feeds
            return InputError(f"input '{empty[0]}' has shape {list(feed[empty[0]].shape)}: a chunk needs at "
                              "least one step")
        return None

    def _streamed(self) -> list:
        return [i.name for i in self._session.get_inputs() if i.name not in self._pairs]

    def _run(self, chunks: list, indices: list, results: list) -> None:
        feeds = {self._members[chunks[i].sequence]: chunks[i].feed for i in indices}
        try:
            outs = self._group.run(feeds)
        except Exception as e:        # noqa: BLE001 -- whatever it is, it must fail its own chunk only
            if len(indices) == 1:
                results[indices[0]] = e
                return
            for i in indices:                      # find the culprit: the others still step
                self._run(chunks, [i], results)
            return
        self.counts["steps"] += 1
        self.counts["chunks"] += len(indices)
        for i in indices:
            results[i] = outs[self._members[chunks[i].sequence]]


def _waves(chunks: list) -> list:
    """Chunk indices in waves holding each sequence at most once, keeping each sequence's order."""
    waves, depth = [], Counter()
    for i, c in enumerate(chunks):
        n = depth[c.sequence]
        depth[c.sequence] += 1
        if n == len(waves):
            waves.append([])
        waves[n].append(i)
    return waves


def _by_signature(chunks: list, indices: list) -> dict:
    groups: dict = {}
    for i in indices:
        feed = chunks[i].feed
        sig = tuple(sorted((n, np.asarray(v).shape, np.asarray(v).dtype.str) for n, v in feed.items()))
        groups.setdefault(sig, []).append(i)
    return groups
