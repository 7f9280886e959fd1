"""tests/procs.py: a timed-out child dies with everything it started."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from procs import GroupTimeout, run, spawned

# A parent that starts a grandchild in the background (as a build tool starts compilers), records its pid, waits.
FAMILY = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
open(sys.argv[1], "w").write(str(child.pid))
print("started", flush=True)
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); its state letter says it is dead.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


def _dies(pid: int) -> bool:
    """True once `pid` is gone: a killed process dies when the kernel next runs it, which under load takes a
    while, so this polls (up to a minute: a hang guard, not a timing check)."""
    for _ in range(1200):
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _wait_for_file(path: Path) -> int:
    for _ in range(1200):  # a hang guard, not a timing check
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} was never written")


def test_timeout_kills_the_grandchild_too(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    # The timeout must fire after the family has started (on a busy machine two interpreter starts can take
    # seconds): a run that timed out too early is repeated with twice the time, so no timing is asserted.
    for timeout in (3, 6, 12, 24, 48, 96):
        pid_file.unlink(missing_ok=True)
        with pytest.raises(GroupTimeout) as info:
            run([sys.executable, "-c", FAMILY, str(pid_file)], timeout=timeout)
        if "started" in info.value.stdout:
            break
    assert "killed with its process group" in str(info.value)
    assert "started" in info.value.stdout
    grandchild = int(pid_file.read_text())
    assert _dies(grandchild)


def test_run_returns_output_and_exit_code() -> None:
    code = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    proc = run([sys.executable, "-c", code], timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out\n", "err\n")


def test_spawned_kills_the_group_on_exit(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    with spawned([sys.executable, "-c", FAMILY, str(pid_file)]) as proc:
        grandchild = _wait_for_file(pid_file)
        assert _alive(grandchild)
    assert proc.returncode is not None
    assert _dies(grandchild)
