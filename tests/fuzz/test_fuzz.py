"""The fuzz suite (issue 12): fuzz_cases.py's kinds, each batch of cases in its own process, so
a crash or a hang is a failing case with the command that replays it, not a dead test runner.

    python -m pytest -m fuzz tests/fuzz                       # CI: fixed seed and case counts
    LSTMRT_FUZZ_CASES=5000 LSTMRT_FUZZ_SEED=7 python -m pytest -m fuzz tests/fuzz -s

LSTMRT_FUZZ_CASES: cases per kind (default 300); LSTMRT_FUZZ_SEED (default 12); LSTMRT_FUZZ_SECONDS:
time budget per kind (default 120): past it no new batch starts and the count run is reported.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fuzz_cases import KINDS  # noqa: E402

pytestmark = pytest.mark.fuzz

CASES = int(os.environ.get("LSTMRT_FUZZ_CASES", "300"))
SEED = int(os.environ.get("LSTMRT_FUZZ_SEED", "12"))
BUDGET_S = float(os.environ.get("LSTMRT_FUZZ_SECONDS", "120"))
JOBS = int(os.environ.get("LSTMRT_FUZZ_JOBS", str(min(4, os.cpu_count() or 1))))   # worker processes at once
BATCH = 50                    # cases per process
BATCH_TIMEOUT_S = float(os.environ.get("LSTMRT_FUZZ_BATCH_TIMEOUT", "240"))   # longer: it hung


def _replay(kind: str, index: int) -> str:
    return f"python {HERE / 'fuzz_cases.py'} {kind} {SEED} {index} 1"


def _run_batch(kind: str, start: int, count: int, timeout_s: float = BATCH_TIMEOUT_S) -> tuple[int, list]:
    """(cases finished, failures) of one worker process; a death or hang fails the case it was on,
    and the rest of the batch runs in a fresh process."""
    failures, done, end = [], 0, start + count
    while start < end:
        try:
            proc = subprocess.run([sys.executable, str(HERE / "fuzz_cases.py"), kind, str(SEED), str(start),
                                   str(end - start)], capture_output=True, text=True, timeout=timeout_s)
            out, code, hung = proc.stdout, proc.returncode, False
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            code, hung = None, True
        reached = start
        for line in out.splitlines():
            word, _, rest = line.partition(" ")
            if word in ("ok", "fail"):
                index, _, why = rest.partition(" ")
                reached = int(index) + 1
                done += 1
                if word == "fail":
                    failures.append(f"{kind} case {index}: {why}\n    replay: {_replay(kind, int(index))}")
        if "done" in out.splitlines() and code == 0:
            break
        # the process died (or hung) on case `reached`
        what = "hung" if hung else f"died (exit {code})"
        tail = "" if hung else _crash_report(proc.stderr or "")
        failures.append(f"{kind} case {reached}: the process {what}\n    replay: {_replay(kind, reached)}\n{tail}")
        done += 1
        start = reached + 1
    return done, failures


def _crash_report(stderr: str) -> str:
    """What a dead process said: a sanitizer's report from its first line (the faulting frames
    come first; its tail is only where the thread started), else the last of stderr."""
    start = stderr.find("ERROR: AddressSanitizer")
    start = stderr.find("WARNING: ThreadSanitizer") if start < 0 else start
    return stderr[start:start + 4000] if start >= 0 else stderr[-1500:]


@pytest.mark.parametrize("kind", KINDS)
def test_fuzz(kind):
    started = time.monotonic()

    def batch(start):
        if time.monotonic() - started > BUDGET_S:   # past the budget: report what ran
            return 0, []
        return _run_batch(kind, start, min(BATCH, CASES - start))
    with ThreadPoolExecutor(JOBS) as pool:
        results = list(pool.map(batch, range(0, CASES, BATCH)))
    done = sum(n for n, _ in results)
    failures = [f for _, fs in results for f in fs]
    print(f"\nfuzz {kind}: {done} of {CASES} cases (seed {SEED}) in {time.monotonic() - started:.0f} s, "
          f"{len(failures)} failing")
    assert not failures, "\n".join(failures[:20])
    assert done >= min(CASES, BATCH)


def test_a_crash_or_hang_is_a_failing_case_and_the_batch_goes_on():
    done, failures = _run_batch("selftest", 0, 5, timeout_s=8)
    assert done == 5
    assert len(failures) == 2, failures
    assert "selftest case 1: the process died" in failures[0] and "selftest 12 1 1" in failures[0]
    assert "selftest case 3: the process hung" in failures[1]
