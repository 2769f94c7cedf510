"""Ending a process the harness started, and freezing one the way a hung peer behaves (its
connections stay open, nothing answers)."""
from __future__ import annotations

import os
import signal
import subprocess


def end_process(proc: subprocess.Popen | None, wait_s: float = 10.0) -> None:
    """SIGTERM `proc` if it still runs, and SIGKILL it if it has not ended within `wait_s`."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def pause_process(pid: int | None) -> bool:
    """SIGSTOP `pid`; False when there is no process to stop."""
    if pid is None:
        return False
    os.kill(pid, signal.SIGSTOP)
    return True


def resume_process(pid: int | None) -> None:
    """SIGCONT `pid`, if there is one."""
    if pid is not None:
        os.kill(pid, signal.SIGCONT)
