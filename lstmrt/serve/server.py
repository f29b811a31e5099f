"""Running `tritonserver` (from the nvidia-pytriton wheel) on a generated model repository.

The Python-backend stub embeds the Python whose version it was built for; pytriton ships one
stub per Python version, and we give Triton a backend directory holding the one for this
interpreter.  The embedded Python finds its prefix by looking up `python3` on PATH, so this
interpreter's bin/ goes first on PATH (a virtual environment is then found by its pyvenv.cfg),
its libpython goes first on LD_LIBRARY_PATH, and the directory lstmrt is imported from goes on
PYTHONPATH (an editable install is otherwise reached only through a .pth hook).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .interface import ServeError
from .repository import ServeOptions, write_repository


def _pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError:
        raise ServeError("lstmrt serve needs Triton's server binary from nvidia-pytriton: "
                         "pip install 'lstmrt[serve]'") from None
    return Path(pytriton.__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_backends(directory: Path) -> Path:
    """A Triton backend directory whose Python backend runs this interpreter's Python."""
    dist = _pytriton_root() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServeError(f"nvidia-pytriton has no Python-backend stub for Python {version} ({stub})")
    python = directory / "python"
    python.mkdir(parents=True, exist_ok=True)
    for item in (dist / "backends" / "python").iterdir():
        if item.is_file() and not (python / item.name).exists():
            (python / item.name).symlink_to(item)
    shutil.copy(stub, python / "triton_python_backend_stub")
    return directory


def server_env() -> dict:
    env = dict(os.environ)
    libs = _pytriton_root().parent / "nvidia_pytriton.libs"
    lib_dirs = [sysconfig.get_config_var("LIBDIR") or "", str(libs), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(d for d in lib_dirs if d)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    lstmrt_home = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [lstmrt_home, env.get("PYTHONPATH", "")] if p)
    return env


def _wait_gone(group: int, timeout: float) -> None:
    """Until no process of this process group runs (a SIGKILLed stub lingers a moment, and a
    server restarted at once on its ports would meet it); zombies count as gone."""
    deadline = time.monotonic() + timeout
    while _group_running(group) and time.monotonic() < deadline:
        time.sleep(0.01)


def _group_running(group: int) -> bool:
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:        # no /proc: nothing to wait on
        return False
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state, _, pgrp = f.read().rpartition(")")[2].split()[:3]
        except (OSError, ValueError):
            continue           # ended meanwhile
        if int(pgrp) == group and state != "Z":
            return True
    return False


class Server:
    """`tritonserver` serving one model as lstmrt streams; a context manager.  Ports left at 0
    are picked free on localhost.  log: a file path for Triton's log, or None for this
    process's stderr (warnings and errors only unless verbose).  repository: serve this
    already written repository instead (model_path None; options.name is the model awaited)."""

    def __init__(self, model_path, options: ServeOptions, *, http_port: int = 0, grpc_port: int = 0,
                 metrics_port: int = 0, address: str = "0.0.0.0", log=None, verbose: bool = False,
                 startup_timeout: float = 120.0, repository=None):
        self.model_path, self.options = (Path(model_path) if model_path else None), options
        self.repository = Path(repository) if repository else None
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.address, self.log, self.verbose, self.startup_timeout = address, log, verbose, startup_timeout
        self._work: tempfile.TemporaryDirectory | None = None
        self._proc: subprocess.Popen | None = None
        self.returncode: int | None = None

    # -- endpoints -------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://localhost:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://localhost:{self.metrics_port}/metrics"

    # -- lifetime ----------------------------------------------------------------------
    def start(self) -> "Server":
        """Write the repository, launch tritonserver, wait until the model is ready; on any
        failure or interruption on the way, stop what was started and re-raise."""
        try:
            self._launch()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self) -> None:
        self._work = tempfile.TemporaryDirectory(prefix="lstmrt-serve-")
        work = Path(self._work.name)
        models = self.repository
        if models is None:
            models = work / "models"
            write_repository(self.model_path, models, self.options)
        backends = prepare_backends(work / "backends")
        cmd = [str(_pytriton_root() / "tritonserver" / "bin" / "tritonserver"),
               f"--model-repository={models}", f"--backend-directory={backends}",
               f"--http-address={self.address}", f"--grpc-address={self.address}",
               f"--metrics-address={self.address}",
               f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
               f"--metrics-port={self.metrics_port}", "--allow-metrics=true", "--allow-gpu-metrics=false",
               f"--log-info={str(bool(self.verbose or self.log)).lower()}", "--exit-timeout-secs=5",
               "--disable-auto-complete-config"]
        out = open(self.log, "ab") if self.log else None
        try:
            # its own session: a terminal's Ctrl-C reaches us, and we stop Triton in order
            self._proc = subprocess.Popen(cmd, env=server_env(), stdout=out, stderr=subprocess.STDOUT if out else None,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            if out:
                out.close()

    def _wait_ready(self) -> None:
        url = f"http://127.0.0.1:{self.http_port}/v2/models/{self.options.name}/ready"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServeError(f"tritonserver exited with status {self._proc.returncode} while starting"
                                 + self._log_tail())
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise ServeError(f"tritonserver did not get model '{self.options.name}' ready within "
                         f"{self.startup_timeout:g} s" + self._log_tail())

    def _log_tail(self) -> str:
        if self.log and os.path.exists(self.log):
            with open(self.log, errors="replace") as f:
                lines = f.readlines()
            errors = [line for line in lines if line.startswith("E")]
            return "; its errors:\n" + "".join((errors or lines)[-12:])
        return " (its messages are above)"

    def poll(self):
        return None if self._proc is None else self._proc.poll()

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (Triton unloads its models and stops its stubs), SIGKILL to the process group
        past `timeout`; returns the server's exit status."""
        proc, self._proc = self._proc, None
        status = self.returncode        # stopped already: the status it stopped with
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            status = self.returncode = proc.returncode
            try:
                os.killpg(proc.pid, signal.SIGKILL)    # any stub Triton left behind
            except (ProcessLookupError, PermissionError):
                pass
            _wait_gone(proc.pid, timeout)
        if self._work is not None:
            self._work.cleanup()
            self._work = None
        return status

    def __enter__(self):
        return self.start() if self._proc is None else self

    def __exit__(self, *exc):
        self.stop()
