"""Loopback ports for the servers the harness starts, handed out without a race.

Binding port 0 and closing the socket again only says which port was free a moment ago: the next
bind to port 0 may be given the same one, and so two servers of one test were once given one port.
Here a port is reserved instead: the socket that found it stays bound for the life of the process,
so the kernel gives it to no other bind to port 0 and to no outgoing connection, in this process or
another, and this process never hands it out twice.

A server can still listen on a reserved port: the reserving socket sets SO_REUSEADDR and never
listens, and Linux lets a listener that also sets SO_REUSEADDR bind beside such a socket. Every
server the harness runs sets it (asyncio's servers, so uvicorn and aiohttp; the JVM's server
sockets, so Kafka; HAProxy; Go's listeners, so podman's published ports). A server that did not
would fail at once with "address already in use". Until a server listens, connections to a reserved
port are refused, which makes it an address where nothing answers, too.
"""
from __future__ import annotations

import socket
import threading


class PortReservations:
    """Loopback ports, each reserved by a bound socket until `close`."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._held: dict[int, socket.socket] = {}
        self._lock = threading.Lock()

    def reserve(self) -> int:
        with self._lock:
            refused: list[socket.socket] = []
            try:
                while True:
                    probe = self._bound()
                    port: int = probe.getsockname()[1]
                    if port not in self._held:
                        self._held[port] = probe
                        return port
                    refused.append(probe)  # held while asking again, so the kernel moves on
            finally:
                for probe in refused:
                    probe.close()

    def _bound(self) -> socket.socket:
        probe = socket.socket()
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((self.host, 0))
        except OSError:
            probe.close()
            raise
        return probe

    def close(self) -> None:
        """Give every reserved port back."""
        with self._lock:
            for probe in self._held.values():
                probe.close()
            self._held.clear()


RESERVATIONS = PortReservations()  # the process's own: its ports stay reserved until it exits


def free_port() -> int:
    """A loopback port reserved for the caller for the life of the process (see the module's notes)."""
    return RESERVATIONS.reserve()


def port_open(port: int, timeout: float = 0.2) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
        return True
    except OSError:
        return False
