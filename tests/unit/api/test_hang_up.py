"""A stream waiting in silence tells a client that hung up from one that waits, on real
sockets."""

from __future__ import annotations

import socket
import struct

from api.streaming import hang_up_check


def test_a_waiting_client_is_there_and_a_closed_one_gone() -> None:
    server, client = socket.socketpair()
    with server, client:
        gone = hang_up_check({"gunicorn.socket": server})
        assert gone is not None
        assert not gone()
        client.sendall(b"x")  # bytes sent early (a pipelined request) are not a hang-up
        assert not gone()
        client.close()
        server.recv(1)
        assert gone()


def test_a_reset_connection_is_gone() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        with server:
            gone = hang_up_check({"gunicorn.socket": server})
            assert gone is not None and not gone()
            # SO_LINGER 0: the close sends a reset, not an end of stream.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            assert gone()


def test_without_the_servers_socket_nothing_is_checked() -> None:
    assert hang_up_check({}) is None
