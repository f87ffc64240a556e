"""A free TCP port on 127.0.0.1: free now, so nothing listens there until a test starts a server on it."""

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
