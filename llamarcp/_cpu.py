"""CPU facts llamarcp's defaults depend on: how many physical cores to use, and whether llama.cpp's extra
CPU buffer types (weight repacking, AMX) are safe to use.

Threads: one per physical core this process may run on (hyper-threads make decoding slower, not faster).

Extra buffer types:

On the machines this project builds and tests on (a `-march=native` ggml on a VM whose CPU reports AMX),
ggml's AMX matrix path dies with SIGILL/SIGSEGV on the first multi-token batch of a quantized model, while
a short tile-instruction probe passes (the tile state is apparently lost between instructions, so no probe can
prove it safe). We therefore leave the extra buffer types off when the loaded ggml offers an AMX buffer type;
`Llama(use_extra_bufts=True)` or `LLAMARCP_EXTRA_BUFTS=1` turns them back on, `=0` turns them off everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["ENV_VAR", "amx_buffer_type_offered", "default_use_extra_bufts", "physical_core_count"]

ENV_VAR = "LLAMARCP_EXTRA_BUFTS"

_verdict: dict[str, bool] = {}


def amx_buffer_type_offered(lib: Any, ffi: Any) -> bool:
    """Whether the loaded ggml CPU backend offers the AMX weight buffer type (it was built with AMX)."""
    device = lib.ggml_backend_dev_by_type(lib.GGML_BACKEND_DEVICE_TYPE_CPU)
    if device == ffi.NULL:
        return False
    reg = lib.ggml_backend_dev_backend_reg(device)
    fn = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
    if fn == ffi.NULL:
        return False
    get_extra = ffi.cast("ggml_backend_buffer_type_t * (*)(ggml_backend_dev_t)", fn)
    bufts = get_extra(device)
    i = 0
    while bufts != ffi.NULL and bufts[i] != ffi.NULL:
        if ffi.string(lib.ggml_backend_buft_name(bufts[i])) == b"AMX":
            return True
        i += 1
    return False


def default_use_extra_bufts(lib: Any, ffi: Any) -> bool:
    """`llama_model_params.use_extra_bufts` when the caller does not say: off where ggml would use AMX."""
    setting = os.environ.get(ENV_VAR, "").strip().lower()
    if setting in ("1", "true", "yes", "on"):
        return True
    if setting in ("0", "false", "no", "off"):
        return False
    if "extra" not in _verdict:
        _verdict["extra"] = not amx_buffer_type_offered(lib, ffi)
    return _verdict["extra"]


def physical_core_count() -> int:
    """Physical cores this process may run on (hyper-threads make decoding slower, not faster)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = list(range(os.cpu_count() or 1))
    cores: set[str] = set()
    for cpu in allowed:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            cores = set()
            break
    if cores:
        return len(cores)
    try:  # /proc/cpuinfo: count distinct (physical id, core id) among the allowed processors
        pairs: set[tuple[str, str]] = set()
        block: dict[str, str] = {}
        for line in [*Path("/proc/cpuinfo").read_text().splitlines(), ""]:
            if line.strip():
                key, _, value = line.partition(":")
                block[key.strip()] = value.strip()
                continue
            if block.get("processor", "").isdigit() and int(block["processor"]) in allowed and "core id" in block:
                pairs.add((block.get("physical id", "0"), block["core id"]))
            block = {}
        if pairs:
            return len(pairs)
    except OSError:
        pass
    try:  # other systems (macOS, Windows): psutil knows, when installed
        import psutil

        physical = psutil.cpu_count(logical=False)
        if physical:
            return max(1, min(int(physical), len(allowed)))
    except ImportError:
        pass
    return max(1, len(allowed))
