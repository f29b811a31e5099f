"""fork() in tests that also run under AddressSanitizer.

GCC 12's libasan (like LLVM's before 18) does not lock its allocator around fork(): a thread
inside malloc at that moment (an onnxruntime pool worker still starting up, say) leaves the
allocator's lock held in the child, whose first malloc then waits forever
(google/sanitizers#774; LLVM fixed it in llvm/llvm-project#75290).  glibc's malloc is
fork-safe, so a plain process never meets this.  Caught in CI's ASan fuzz run: the child
blocked in the allocator's mutex on its first `operator new`."""
from __future__ import annotations

import os
import threading
import time

_QUIET_STATES = set("STtZX")    # asleep, stopped or gone: not inside malloc


def fork_once_threads_sleep(timeout_s: float = 5.0) -> int:
    """os.fork(), once every other thread of this process sleeps (or timeout_s has passed)."""
    deadline = time.monotonic() + timeout_s
    while not _others_quiet() and time.monotonic() < deadline:
        time.sleep(0.001)
    return os.fork()


def _others_quiet() -> bool:
    me = str(threading.get_native_id())
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:             # no /proc: nothing to wait on
        return True
    return all(task == me or _state(task) in _QUIET_STATES for task in tasks)


def _state(task: str) -> str:
    try:
        with open(f"/proc/self/task/{task}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]   # the field after the command's name
    except (OSError, IndexError):
        return "X"              # the thread has ended
