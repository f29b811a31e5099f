"""Builds the C kernel through cffi; all other metadata lives in pyproject.toml."""
import os
import shutil
import sysconfig

from setuptools import setup


def _require_c_compiler():
    if os.name == "nt":
        return
    cc = os.environ.get("CC") or (sysconfig.get_config_var("CC") or "cc")
    if shutil.which(cc.split()[0]) is None:
        raise SystemExit(
            f"lstmrt builds a C kernel and needs a C compiler, but '{cc.split()[0]}' was not found.\n"
            "Install one, then retry:  Debian/Ubuntu: apt install build-essential python3-dev | "
            "Fedora: dnf install gcc python3-devel | macOS: xcode-select --install | "
            "or point the CC environment variable at your compiler."
        )


_require_c_compiler()
setup(cffi_modules=["lstmrt/_build_kernel.py:ffibuilder"])
