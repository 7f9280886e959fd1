"""Where build_lib.py keeps sources and builds, and how a build is keyed.

Shared by build_lib.py (writer) and llamarcp._lib (reader) so both agree on one key.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Written next to the libraries of a finished build; its presence marks the build complete.
STAMP_NAME = "llamarcp-build.json"


def cache_root() -> Path:
    """`$LLAMARCP_CACHE_DIR`, else `$XDG_CACHE_HOME/llamarcp`, else `~/.cache/llamarcp`."""
    explicit = os.environ.get("LLAMARCP_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "llamarcp"


def build_key(source_id: str, cmake_args: list[str]) -> str:
    """Key a build by what decides the binary: the source identity, the CMake flags and the machine."""
    # Imported here: this runs once per process at library lookup, and these imports cost ~5 ms.
    import hashlib
    import json

    if hasattr(os, "uname"):
        machine, system = os.uname().machine, os.uname().sysname
    else:
        import platform

        machine, system = platform.machine(), platform.system()
    payload = json.dumps(
        {
            "source": source_id,
            "cmake_args": sorted(cmake_args),
            "machine": machine,
            "system": system,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build_dir(source_id: str, cmake_args: list[str]) -> Path:
    return cache_root() / "builds" / build_key(source_id, cmake_args)


def lib_dir(source_id: str, cmake_args: list[str]) -> Path:
    """Directory holding libllama and libggml* of a finished build."""
    return build_dir(source_id, cmake_args) / "lib"


#: CMake flags every build gets; part of the key, so changing them invalidates old builds.
FIXED_CMAKE_ARGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON",
    "-DCMAKE_BUILD_RPATH=$ORIGIN;$ORIGIN/../lib",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_COMMON=ON",
    "-DLLAMA_OPENSSL=OFF",
]

if os.name == "posix" and os.uname().machine in ("x86_64", "amd64"):
    # ggml's -march=native build enables AMX where the CPU reports it, and its AMX matmul path dies with
    # SIGILL/SIGSEGV on the first multi-token batch on the VMs we build on; without AMX, repacking still works.
    # A user's own -DCMAKE_C_FLAGS in CMAKE_ARGS comes later on the command line and wins.
    _NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    FIXED_CMAKE_ARGS += [f"-DCMAKE_C_FLAGS={_NO_AMX}", f"-DCMAKE_CXX_FLAGS={_NO_AMX}"]


def pinned_default_lib_dir() -> Path:
    """The cache directory a plain `python build_lib.py` fills (pinned commit, CPU, no CMAKE_ARGS)."""
    from llamarcp._pin import LLAMA_CPP_COMMIT

    return lib_dir(f"pinned:{LLAMA_CPP_COMMIT}", FIXED_CMAKE_ARGS)
