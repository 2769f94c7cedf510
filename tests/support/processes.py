"""Freezing a process the way a hung peer behaves: its connections stay open, nothing answers."""
from __future__ import annotations

import os
import signal


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
