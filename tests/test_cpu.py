"""CPU facts behind the defaults: physical cores, and the extra-buffer-type (AMX) switch."""

from __future__ import annotations

import os

import pytest

from llamarcp import _backend, _cpu
from llamarcp._ffi import ffi


def test_physical_core_count_is_within_the_allowed_cpus() -> None:
    cores = _cpu.physical_core_count()
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    assert 1 <= cores <= allowed


def test_physical_core_count_without_sysfs_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    real_read_text = _cpu.Path.read_text

    def no_sysfs(self: _cpu.Path, *args: object, **kwargs: object) -> str:
        if str(self).startswith("/sys/"):
            raise OSError("no sysfs here")
        return real_read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_cpu.Path, "read_text", no_sysfs)
    assert 1 <= _cpu.physical_core_count() <= (os.cpu_count() or 1)


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("0", False)])
def test_env_var_decides_extra_buffer_types(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv(_cpu.ENV_VAR, value)
    _cpu._verdict.clear()
    try:
        assert _cpu.default_use_extra_bufts(_backend.get_lib(), ffi) is expected
    finally:
        _cpu._verdict.clear()


def test_default_follows_whether_amx_is_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_cpu.ENV_VAR, raising=False)
    _cpu._verdict.clear()
    try:
        lib = _backend.get_lib()
        assert _cpu.default_use_extra_bufts(lib, ffi) is (not _cpu.amx_buffer_type_offered(lib, ffi))
    finally:
        _cpu._verdict.clear()
