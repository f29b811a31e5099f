"""Building: a missing C compiler stops the install with a message saying what to install."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_missing_compiler_is_explained():
    env = {**os.environ, "CC": "/nonexistent/cc"}
    done = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "needs a C compiler" in done.stderr and "build-essential" in done.stderr
