"""The locks that serialise calls on a stream, a group or a backend's compile cache, made fresh
in a forked child.

A lock some other thread holds when the process forks stays held in the child for good (that
thread does not exist there), so every call in the child would wait forever.  A fork only
counts itself here: the hook runs inside os.fork(), so it allocates nothing that could set off
a collection (whose finalizers would run before the child's own code).  An owner takes its
lock through `lock_of`, which replaces a lock made before the latest fork.  What the locks
guard is whole at any instant: a stream replaces its state in one assignment at the end of a
call, a backend its cache entries.  (A group's banks are written by its program's last
instructions: a fork during those may leave a member's row half written in the child.)
"""
from __future__ import annotations

import os
import threading

_forks = 0                      # forks this process is the child of
_renewing = threading.Lock()    # two first calls in a child renew a lock once


def _count_fork() -> None:
    global _forks, _renewing
    _forks += 1
    _renewing = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_count_fork)


def new_lock(owner, kind=threading.Lock):
    """A lock (or an RLock: `kind`) for owner._lock; take it with lock_of(owner)."""
    owner._lock_forks, owner._lock_kind = _forks, kind
    return kind()


def lock_of(owner):
    """owner._lock, replaced first in a child forked since it was made."""
    if owner._lock_forks != _forks:
        with _renewing:
            if owner._lock_forks != _forks:
                owner._lock, owner._lock_forks = owner._lock_kind(), _forks
    return owner._lock
