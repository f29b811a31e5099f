"""cffi build script for the C kernel in csrc/ (used by setup.py's cffi_modules).

Run directly to build a variant elsewhere, e.g. under AddressSanitizer:
    LSTMRT_SANITIZE=address python lstmrt/_build_kernel.py build/asan
"""
import os
import re
import sys
from pathlib import Path

from cffi import FFI

CSRC = Path(__file__).resolve().parent.parent / "csrc"
SOURCES = ["cpu.c", "pack.c", "threads.c", "lstmrt.c", "int8_ref.c", "program.c", "ops_move.c", "ops_math.c",
           "ops_nn.c", "ops_fused.c", "kernel_scalar.c", "kernel_avx2.c", "kernel_avx512.c"]


def _public_declarations() -> str:
    """The header minus preprocessor lines and the C++ guard: what cffi's cdef parses."""
    text = (CSRC / "lstmrt.h").read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    text = "\n".join(lines).replace('extern "C" {', "")
    # with the #ifdef lines gone, the C++ guard leaves a lone closing brace
    return re.sub(r"^\s*}\s*$", "", text, flags=re.M)


def _compile_args() -> list:
    if os.name == "nt":
        return ["/O2"]
    args = ["-O2", "-std=c99", "-Wall", "-Wextra", "-fno-math-errno"]
    sanitize = os.environ.get("LSTMRT_SANITIZE")
    if sanitize:
        args += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g", "-O1"]
    return args


def make_builder(absolute_paths: bool = False) -> FFI:
    # setuptools refuses absolute source paths; ffi.compile() changes directory and needs them
    path = (lambda p: str(p)) if absolute_paths else os.path.relpath
    sanitize = os.environ.get("LSTMRT_SANITIZE")
    builder = FFI()
    builder.cdef(_public_declarations())
    builder.set_source(
        "lstmrt._kernel",
        '#include "lstmrt.h"',
        sources=[path(CSRC / s) for s in SOURCES],
        include_dirs=[path(CSRC)],
        extra_compile_args=_compile_args(),
        # -pthread: the kernel splits a batch over threads (needed before glibc 2.34)
        extra_link_args=([] if os.name == "nt" else ["-pthread"]) + ([f"-fsanitize={sanitize}"] if sanitize else []),
        libraries=[] if os.name == "nt" else ["m"],
    )
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "build/kernel").resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(make_builder(absolute_paths=True).compile(tmpdir=str(out), verbose=False))
