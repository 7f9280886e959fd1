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


def _wait_for_file(path: Path) -> int:
    for _ in range(1200):  # a hang guard, not a timing check
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} was never written")


def test_timeout_kills_the_grandchild_too(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    with pytest.raises(GroupTimeout) as info:
        run([sys.executable, "-c", FAMILY, str(pid_file)], timeout=3)
    assert "killed with its process group" in str(info.value)
    assert "started" in info.value.stdout
    grandchild = int(pid_file.read_text())
    assert not _alive(grandchild)


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
    assert not _alive(grandchild)
