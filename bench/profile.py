"""--profile: where a bridge process spends its time under a load, sampled by py-spy, and summarised."""
from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from .plan import BRIDGE
from .runs import Bench

PROFILE_AREAS = (  # by the innermost Python frame of a sample: (path fragment, area)
    ("bridge/logs.py", "logging (one JSON line per push)"),
    ("logging/", "logging (one JSON line per push)"),
    ("prometheus_client/", "metrics (prometheus_client)"),
    ("aiokafka/", "Kafka client (aiokafka)"),
    ("asyncio/streams.py", "Kafka client (aiokafka)"),  # its connections are asyncio streams
    ("(ssl.py:", "TLS (ssl.SSLObject: HTTP and Kafka)"),
    ("uvicorn/", "HTTP server (uvicorn, incl. socket writes)"),
    ("starlette/", "Starlette routing"),
    ("bridge/", "bridge/ code itself"),
    ("asyncio/runners.py", "event loop, TLS, socket reads (uvloop, native)"),
    ("asyncio/", "asyncio (tasks, futures, timeouts)"),
    ("contextlib.py", "contextlib (async with)"),
)


def profile_bridge(bench: Bench, body_file: Path, out: Path, rate: float | None = None,
                   window_s: float | None = None, samples_per_s: int = 100, native: bool = True) -> dict:
    """py-spy samples a fresh bridge (first worker) over the measured window of the load `rate`
    (None: saturation); the warm-up (the connections' TLS handshakes) is left out.

    With `native`, native frames are included (uvloop, TLS, the interpreter's GC, system calls), so
    time spent outside Python code is attributed too, and py-spy pauses the process for each
    sample; without, it reads the Python frames while the process runs (`--nonblocking`), and time
    in native code counts for the Python frame that called it. Idle threads are not sampled, so
    the shares are of busy time."""
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        found = shutil.which("py-spy")
        if found is None:
            return {"error": "py-spy is not installed (pip install py-spy)"}
        py_spy = Path(found)
    window_s = window_s or bench.plan.window_s
    samplers: list[subprocess.Popen] = []
    with bench.group(BRIDGE) as bridge:
        command = [str(py_spy), "record", "--pid", str(bridge.pids[0]), "--rate", str(samples_per_s),
                   "--native" if native else "--nonblocking", "--function", "--duration", str(int(window_s)),
                   "--format", "raw", "--output", str(out)]
        # The generator's window opens after its warm-up: start sampling then.
        timer = threading.Timer(bench.plan.warmup_s, lambda: samplers.append(subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
        timer.start()
        result = bench.load(bridge, body_file, rate=rate, window_s=window_s)
        timer.join()
        try:
            _, err = samplers[0].communicate(timeout=60)
        except subprocess.TimeoutExpired:
            samplers[0].kill()
            _, err = samplers[0].communicate()
    if not out.exists():
        return {"error": f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}"}
    return {"load": result, **summarise_profile(out)}


# Frames of a thread that waits rather than runs: py-spy --native samples some of them as busy
# (the log flusher's sleep, an idle executor thread, a thread waiting for the GIL, the event loop in
# epoll). They are counted apart and left out of the shares, which are then shares of CPU.
WAITING = ("time_sleep ", "clock_nanosleep ", "PyThread_acquire_lock_timed ", "pthread_cond_timedwait ",
           "pthread_cond_wait ", "epoll_wait ", "epoll_pwait ", "sem_timedwait ", "sem_wait ")


def python_frame(frame: str) -> bool:
    return ".py:" in frame or ".py)" in frame


def summarise_profile(raw: Path) -> dict:
    """From py-spy's raw stacks ('frame;frame;... count', outermost first): where the time goes.

    Samples of a waiting thread (WAITING) are counted as `waiting` and left out of the rest.
    - areas: each sample goes to the area of its innermost Python frame (native code such as a
      system call counts for the Python code that called it), except that the interpreter's
      cyclic garbage collector is its own area wherever it was triggered;
    - self: the innermost frame of each sample, native or Python;
    - bridge_inclusive: each bridge/ function with everything it calls."""
    own: Counter = Counter()
    areas: Counter = Counter()
    inclusive: Counter = Counter()
    total = waiting = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if any(frame.startswith(WAITING) for frame in frames):
            waiting += n
            continue
        total += n
        own[frames[-1]] += n
        if any(f.startswith("gc_collect") for f in frames):
            areas["Python garbage collector (gc)"] += n
        else:
            innermost = next((f for f in reversed(frames) if python_frame(f)), "")
            areas[next((area for fragment, area in PROFILE_AREAS if fragment in innermost), "other")] += n
        for frame in set(frames):
            if "(bridge/" in frame and "(bridge/__main__.py" not in frame:
                inclusive[frame] += n
    if total == 0:
        return {"samples": 0, "waiting": waiting}

    def share(counter: Counter, top: int) -> list[tuple[str, float]]:
        return [(name, 100.0 * n / total) for name, n in counter.most_common(top)]

    return {"samples": total, "waiting": waiting, "areas": share(areas, 12), "self": share(own, 15),
            "bridge_inclusive": share(inclusive, 15)}
