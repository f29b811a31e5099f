"""The locks that serialise calls on a stream, a group or a backend's compile cache, made fresh
in a forked child.

A lock some other thread holds when the process forks stays held in the child for good (that
thread does not exist there), so every call in the child would wait forever.  What the locks
guard is whole at any instant: a stream replaces its state in one assignment at the end of a
call, a backend its cache entries.  (A group's banks are written by its program's last
instructions: a fork during those may leave a member's row half written in the child.)
"""
from __future__ import annotations

import os
import threading
import weakref

_owners: weakref.WeakSet = weakref.WeakSet()


def new_lock(owner) -> threading.Lock:
    """A lock for owner._lock, replaced in a forked child."""
    _owners.add(owner)
    return threading.Lock()


def _renew_after_fork() -> None:
    for owner in list(_owners):
        owner._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_after_fork)
