"""Subprocesses for tests: each child leads its own process group, and a timeout kills the whole group.

`subprocess.run(timeout=...)` kills only the direct child; a build it started (cmake, make, cc1plus, a
nested build_lib.py holding a cache lock) would outlive the test. These helpers kill every process of the
group instead, so nothing a test started keeps running, or keeps holding a lock, after the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any


def kill_group(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM the child's process group, SIGKILL it after `grace` seconds, and reap the child."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            # The leader is gone; members that ignored SIGTERM still get SIGKILL.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        return


class GroupTimeout(AssertionError):
    """A child ran past its timeout; its process group was killed. Carries what it printed."""

    def __init__(self, cmd: Sequence[str], timeout: float, stdout: str, stderr: str) -> None:
        super().__init__(
            f"{' '.join(map(str, cmd))} ran past {timeout:.0f} s and was killed with its process group\n"
            f"--- stdout (tail)\n{stdout[-2000:]}\n--- stderr (tail)\n{stderr[-2000:]}"
        )
        self.stdout = stdout
        self.stderr = stderr


def run(cmd: Sequence[str], *, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Like `subprocess.run(cmd, capture_output=True, text=True)`; past `timeout` the group dies, GroupTimeout."""
    proc = subprocess.Popen(
        list(map(str, cmd)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        **kwargs,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        stdout, stderr = proc.communicate()
        raise GroupTimeout(cmd, timeout, stdout or "", stderr or "") from None
    except BaseException:
        kill_group(proc)
        raise
    return subprocess.CompletedProcess(list(cmd), proc.returncode, stdout, stderr)


@contextlib.contextmanager
def spawned(cmd: Sequence[str], **kwargs: Any) -> Iterator[subprocess.Popen[Any]]:
    """A long-running child (a server) in its own process group; the group is killed when the block exits."""
    proc = subprocess.Popen(list(map(str, cmd)), start_new_session=True, stdin=subprocess.DEVNULL, **kwargs)
    try:
        yield proc
    finally:
        kill_group(proc)
