"""The harness's loopback ports (tests/support/ports.py): a port is handed out once per process and
stays taken until the process gives it back, yet a server can listen on it."""
import errno
import socket

import pytest

from tests.support.ports import PortReservations, port_open


@pytest.fixture
def reservations():
    ports = PortReservations()
    yield ports
    ports.close()


def test_reservations_in_one_process_never_share_a_port(reservations):
    # Binding port 0 and letting go hands out repeats well before 500 ports (the birthday bound
    # over the kernel's ephemeral range): a test with two servers once got one port for both.
    ports = [reservations.reserve() for _ in range(500)]
    assert len(set(ports)) == len(ports)


def test_a_reserved_port_is_held_until_given_back(reservations):
    port = reservations.reserve()
    with socket.socket() as other, pytest.raises(OSError) as taken:
        other.bind(("127.0.0.1", port))
    assert taken.value.errno == errno.EADDRINUSE
    reservations.close()
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))


def test_a_server_listens_on_a_reserved_port_and_nothing_answers_before(reservations):
    port = reservations.reserve()
    assert not port_open(port), "a reserved port refuses connections until a server listens"
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as every server the harness runs
        server.bind(("127.0.0.1", port))
        server.listen()
        with socket.create_connection(("127.0.0.1", port), timeout=2) as client:
            accepted, _ = server.accept()
            with accepted:
                client.sendall(b"ping")
                assert accepted.recv(4) == b"ping"
