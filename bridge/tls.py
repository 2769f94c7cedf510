"""TLS of the push port: TLS 1.2 or later, and only suites with forward secrecy and AEAD."""
from __future__ import annotations

import ssl
from collections.abc import Callable

import uvicorn

# TLS 1.2 suites with forward secrecy and AEAD only; TLS 1.3 suites are always enabled.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"


def context(_config: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """uvicorn's context (certificate, key, ciphers), with TLS 1.2 as the oldest version offered."""
    made = default()
    made.minimum_version = ssl.TLSVersion.TLSv1_2
    return made
