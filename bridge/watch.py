"""Secrets and certificates from files, read again when the files change, without a restart.

Watched: the service token file, the HTTPS certificate and key, the Kafka client's TLS files and
SASL password file. Every second the watcher looks at each file with os.stat: device, inode, size,
modification and change times of the file the path leads to, through any symbolic links, so a
Kubernetes Secret volume's update (new files in a new directory, then the `..data` link swapped to
it in one rename) is a change like any other. A change is read once the files have looked the same
twice in a row (a writer may still be at work): read and checked in a worker thread, then put in
service on the event loop in one step.

A version that cannot be used (unreadable, empty, a key that does not match its certificate) leaves
the last good one in service, and says so until a good version replaces it: one error line per
version, `bridge_secret_reloads_total{result="failed"}`, `bridge_secret_file_problem` at 1, and an
entry under `secrets` in /readyz (which stays ready: the last good version serves).
"""
from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .auth import Authenticator
from .config import TOKENS_FILE, Settings, read_token_file
from .kafka.credentials import Credentials
from .metrics import Metrics
from .tls import Certificate

log = logging.getLogger("bridge.watch")
INTERVAL_S = 1.0
Stamp = tuple[int, int, int, int, int] | None  # None: the path leads to no file now


class SecretError(Exception):
    """A watched file that must work at start does not."""


def stamp(path: Path) -> Stamp:
    try:
        st = os.stat(path)  # follows symbolic links: the file the path leads to now
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def problem_of(exc: BaseException) -> str:
    """What is wrong with a file, in words that never quote its content."""
    if isinstance(exc, ssl.SSLError):
        return f"not a usable certificate and key ({exc.reason or type(exc).__name__})"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"cannot be read: {exc.strerror or type(exc).__name__}{where}"
    return str(exc)  # our own messages (ValueError, ConfigError): written never to hold a secret


@dataclass(eq=False)
class Watched:
    """One secret kept in files: how to read a version of it, and how to put one in service."""

    name: str        # the `secret` label of the metrics: tokens, tls, kafka_tls, kafka_sasl
    setting: str     # the setting(s) naming the files, for the log and /readyz
    paths: tuple[Path, ...]
    load: Callable[[], Any]        # reads and checks the files (worker thread); raises OSError or ValueError
    use: Callable[[Any], str]      # puts a loaded version in service (event loop); says what changed
    tried: tuple[Stamp, ...] = ()  # the version read last, good or not
    seen: tuple[Stamp, ...] = ()   # the version seen at the last look
    problem: str = ""              # why the newest version is not in service ("" when it is)
    loaded_at: float | None = None  # when the version in service was read (time.time())

    def stamps(self) -> tuple[Stamp, ...]:
        return tuple(stamp(p) for p in self.paths)


class Watcher:
    def __init__(self, metrics: Metrics, interval_s: float = INTERVAL_S) -> None:
        self._metrics = metrics
        self._interval_s = interval_s
        self._watched: list[Watched] = []

    def watch(self, watched: Watched, required: bool = True) -> None:
        """Read the files now and put the version in service, then watch them. A version that
        cannot be used raises SecretError if `required`; otherwise it is reported like a failed
        reload (what is in service stays: for Kafka, the clients try the files again when made)."""
        for result in ("ok", "failed"):
            self._metrics.secret_reloads.labels(watched.name, result)
        watched.tried = watched.seen = watched.stamps()
        try:
            said = watched.use(watched.load())
        except (OSError, ValueError) as exc:
            if required:
                raise SecretError(f"{watched.setting}: {problem_of(exc)}") from None
            self._failed(watched, exc)
        else:
            self._loaded(watched)
            log.info("%s: in service (%s), watched for changes", watched.setting, said)
        self._watched.append(watched)

    def describe(self) -> dict[str, dict[str, str]]:
        """The secrets whose newest files are not in service, for /readyz ({} when all are)."""
        found = {}
        for w in self._watched:
            if w.problem:
                last_good = "never" if w.loaded_at is None else \
                    datetime.fromtimestamp(w.loaded_at, UTC).isoformat(timespec="seconds")
                found[w.name] = {"setting": w.setting, "problem": w.problem, "in_service_since": last_good}
        return found

    async def run(self) -> None:
        """Look at the files every interval, until cancelled."""
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check()
            except Exception:  # a bug must not end the watching
                log.exception("watching the secret files failed; trying again")

    async def check(self) -> None:
        """One look at the files: new versions read in a worker thread, put in service here."""
        for watched, stamps, version in await asyncio.to_thread(self._look):
            self._settle(watched, stamps, version)

    def _look(self) -> list[tuple[Watched, tuple[Stamp, ...], Any]]:
        """(in a worker thread) The new versions that stayed the same since the last look, read:
        each with its stamps and the loaded value or the exception that reading raised."""
        found = []
        for w in self._watched:
            now = w.stamps()
            settled, w.seen = now == w.seen, now
            if now == w.tried or not settled:
                continue
            try:
                version: Any = w.load()
            except (OSError, ValueError) as exc:
                version = exc
            after = w.stamps()
            if after != now:  # changed while being read: judge it once it settles
                w.seen = after
                continue
            found.append((w, now, version))
        return found

    def _settle(self, watched: Watched, stamps: tuple[Stamp, ...], version: Any) -> None:
        watched.tried = stamps
        if isinstance(version, BaseException):
            self._failed(watched, version)
            return
        try:
            said = watched.use(version)
        except (OSError, ValueError) as exc:
            self._failed(watched, exc)
            return
        self._metrics.secret_reloads.labels(watched.name, "ok").inc()
        was_broken = bool(watched.problem)
        self._loaded(watched)
        log.info("%s: a new version is in service (%s)%s", watched.setting, said,
                 "; the earlier problem is resolved" if was_broken else "")

    def _loaded(self, watched: Watched) -> None:
        watched.problem = ""
        watched.loaded_at = time.time()
        self._metrics.secret_loaded.labels(watched.name).set(watched.loaded_at)
        self._metrics.secret_problem.labels(watched.name).set(0)

    def _failed(self, watched: Watched, exc: BaseException) -> None:
        watched.problem = problem_of(exc)
        self._metrics.secret_reloads.labels(watched.name, "failed").inc()
        self._metrics.secret_problem.labels(watched.name).set(1)
        kept = "nothing is in service yet" if watched.loaded_at is None else "the last good version stays in service"
        log.error("%s: the new version cannot be used (%s); %s", watched.setting, watched.problem, kept)


def watch_bridge_files(watcher: Watcher, settings: Settings, auth: Authenticator,
                       certificate: Certificate | None, credentials: Credentials) -> None:
    """Everything the bridge reads from files that may change while it runs. Raises SecretError
    when the token file or the HTTPS certificate cannot be used at start."""
    path = settings.service_tokens_file
    if path is not None:
        watcher.watch(Watched("tokens", TOKENS_FILE, (path,), lambda: read_token_file(path), auth.use))
    if certificate is not None:
        watcher.watch(Watched("tls", "BRIDGE_TLS_CERTFILE/BRIDGE_TLS_KEYFILE", certificate.files, certificate.load,
                              certificate.use))
    if credentials.tls_files:
        watcher.watch(Watched("kafka_tls", "BRIDGE_KAFKA_SSL_*", credentials.tls_files, credentials.load_tls,
                              credentials.use_tls), required=False)
    if credentials.password_file is not None:
        watcher.watch(Watched("kafka_sasl", "BRIDGE_KAFKA_SASL_PASSWORD_FILE", (credentials.password_file,),
                              credentials.load_password, credentials.use_password), required=False)
