"""JSON log lines: one object per line, with the fields a push outcome carries at the top level."""
from __future__ import annotations

import asyncio
import io
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import orjson

LEVELS = {logging.DEBUG: "debug", logging.INFO: "info"}
_second: list[Any] = [-1, ""]  # the last second formatted, and its text (reused while it lasts)


def utc_text(moment: float, zone: str) -> str:
    """`moment` (seconds since the epoch) as ISO 8601 / RFC 3339 UTC with milliseconds, ending in
    `zone` ("Z" for the records' ce_time, "+00:00" for log lines). The second's text is kept while
    it lasts: a push and its log line format the same second."""
    whole = int(moment)
    if whole != _second[0]:
        _second[:] = [whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))]
    return f"{_second[1]}.{int(moment * 1000) % 1000:03d}{zone}"


def timestamp(moment: float) -> str:
    """`moment` (seconds since the epoch) as ISO 8601 UTC with milliseconds and +00:00."""
    return utc_text(moment, "+00:00")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class Repeats(logging.Filter):
    """Keeps a Kafka outage readable: a message of the Kafka client (the same text template from
    the same logger) passes once per `window_s`; the next one that passes says how many were held
    back meanwhile. The client logs every failed reconnection, many per second per broker."""

    def __init__(self, prefix: str = "aiokafka", window_s: float = 60.0, memory: int = 1000) -> None:
        super().__init__()
        self._prefix, self._window_s, self._memory = prefix, window_s, memory
        self._seen: dict[tuple[str, object], _Passed] = {}  # by (logger, template)

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefix):
            return True
        key = (record.name, record.msg)
        entry = self._seen.get(key)
        if entry is not None and record.created - entry.at < self._window_s:
            entry.held_back += 1
            return False
        if entry is not None and entry.held_back:
            record.fields = {**getattr(record, "fields", {}), "repeated": entry.held_back,
                             "repeated_within_s": self._window_s}
        if len(self._seen) >= self._memory:
            self._seen.clear()
        self._seen[key] = _Passed(record.created)
        return True


class _Passed:
    """When a message last passed, and how many like it were held back since."""

    __slots__ = ("at", "held_back")

    def __init__(self, at: float) -> None:
        self.at, self.held_back = at, 0


class LineBudget:
    """Log lines of one kind held to a bounded rate, per key: the first `burst` lines of each
    `interval_s` pass; the others are only counted, and the next line that passes says how many were
    held back (or, once the interval is over, a summary line: see `overdue`). For lines a client can
    cause at any rate (refusals, misrouted pushes)."""

    def __init__(self, burst: int = 5, interval_s: float = 60.0, memory: int = 1000) -> None:
        self._burst, self._interval_s, self._memory = burst, interval_s, memory
        self._windows: dict[str, _Window] = {}

    def take(self, key: str, now: float | None = None) -> int | None:
        """None: hold this line back. Otherwise the line may be written, with the number of lines of
        this key held back since the last one that was (0 if none)."""
        now = time.monotonic() if now is None else now
        window = self._windows.get(key)
        if window is None or now - window.start >= self._interval_s:
            if window is None and len(self._windows) >= self._memory:
                self._windows.clear()
            held = window.held_back if window is not None else 0
            self._windows[key] = _Window(now)
            return held
        if window.passed < self._burst:
            window.passed += 1
            held, window.held_back = window.held_back, 0
            return held
        window.held_back += 1
        return None

    def overdue(self, now: float | None = None) -> list[tuple[str, int]]:
        """The keys whose interval is over with lines held back that no later line has reported,
        each with that number, which is then cleared: a flood that stops is still summed up."""
        now = time.monotonic() if now is None else now
        due = []
        for key, window in self._windows.items():
            if window.held_back and now - window.start >= self._interval_s:
                due.append((key, window.held_back))
                window.held_back = 0
        return due

    def due_in(self, now: float | None = None) -> float | None:
        """Seconds until the next key's interval with lines held back is over (None: nothing held)."""
        now = time.monotonic() if now is None else now
        ends = [w.start + self._interval_s - now for w in self._windows.values() if w.held_back]
        return max(0.0, min(ends)) if ends else None

    @property
    def interval_s(self) -> float:
        return self._interval_s


class BoundedLines:
    """Warnings held to a LineBudget, per key: a line is written with `held_back` (how many lines of
    its key were left out since the last one), or left out and counted (`on_held_back(key)`). Lines
    left out and not reported by a later one are summed up in one line once the key's interval is
    over (`summary_fields` go into that line). Called on the event loop."""

    def __init__(self, logger: logging.Logger, budget: LineBudget, on_held_back: Callable[[str], object],
                 summary_fields: dict[str, Any]) -> None:
        self._logger, self._budget, self._on_held_back = logger, budget, on_held_back
        self._summary_fields = summary_fields
        self._held_back: dict[str, str] = {}  # key -> message of the lines held back, until summed up
        self._summary: asyncio.TimerHandle | None = None

    def __call__(self, key: str, message: str, fields: dict[str, Any]) -> None:
        held_back = self._budget.take(key)
        if held_back is not None:
            self._logger.warning(message, extra={"fields": {**fields, "held_back": held_back}})
            return
        self._on_held_back(key)
        self._held_back[key] = message
        if self._summary is None:
            self._schedule_summary()

    def _schedule_summary(self) -> None:
        wait = self._budget.due_in()
        if wait is not None:
            self._summary = asyncio.get_running_loop().call_later(wait + 0.01, self._sum_up)

    def _sum_up(self) -> None:
        self._summary = None
        interval = self._budget.interval_s
        for key, count in self._budget.overdue():
            message = self._held_back.pop(key, "lines")
            self._logger.warning("%s: %d more lines like it held back", message, count, extra={"fields": {
                **self._summary_fields, "problem": key, "held_back": count, "within_s": interval}})
        self._schedule_summary()


class _Window:
    __slots__ = ("held_back", "passed", "start")

    def __init__(self, start: float) -> None:
        self.start, self.passed, self.held_back = start, 1, 0


class BatchedStderr(logging.StreamHandler[TextIO]):
    """Standard error, written in batches: lines below WARNING wait up to `interval_s` for the ones
    after them, so a busy bridge makes a few writes a second instead of one per push; warnings and
    errors go out at once, and everything is flushed at exit. (A kill -9 loses at most the last
    `interval_s` of info lines.)"""

    def __init__(self, interval_s: float = 0.2) -> None:
        super().__init__(io.TextIOWrapper(io.FileIO(os.dup(2), "w"), encoding="utf-8", errors="replace"))
        self._interval_s = interval_s
        threading.Thread(target=self._flush_regularly, name="log-flush", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING:
                self.stream.flush()
        except Exception:
            self.handleError(record)

    def write_line(self, line: str) -> None:
        """A line already formatted (below WARNING: it waits for the next flush)."""
        with self.lock:  # type: ignore[union-attr]  # made by Handler.__init__
            self.stream.write(line + self.terminator)

    def _flush_regularly(self) -> None:
        while True:
            time.sleep(self._interval_s)
            self.flush()


def direct_line(logger: logging.Logger, message: str) -> Callable[[int, dict[str, Any]], None]:
    """A writer of one line with fields (`message`, from `logger`), formatted as JsonFormatter
    formats it and handed straight to the bridge's standard-error handler, without the LogRecord a
    logger call builds: for the line written per accepted push, about a tenth of its cost
    otherwise. Lines at WARNING or above, and any line where that handler is not the one in
    place (tests capturing logs, a library's own setup), go through the logger as usual."""
    handlers = logging.getLogger().handlers
    handler = handlers[0] if len(handlers) == 1 and isinstance(handlers[0], BatchedStderr) else None
    name = logger.name

    def write(level: int, fields: dict[str, Any]) -> None:
        if not logger.isEnabledFor(level):
            return
        if handler is None or level >= logging.WARNING:
            logger.log(level, message, extra={"fields": fields})
            return
        entry = {"time": timestamp(time.time()), "level": LEVELS.get(level) or logging.getLevelName(level).lower(),
                 "logger": name, "message": message, **fields}
        handler.write_line(orjson.dumps(entry, default=str).decode())

    return write


def setup(level: str) -> None:
    # Fields these lines never show, so a log call need not collect them (source line, thread,
    # process): documented switches of the logging module that make each record cheaper.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = BatchedStderr()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(Repeats())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # libraries: warnings and errors only
    for name in ("bridge", "uvicorn"):
        logging.getLogger(name).setLevel(level.upper())
