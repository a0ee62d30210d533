"""Test servers on loopback in a background thread: one way to start and stop them."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from moto.server import ThreadedMotoServer

from tests.support.net import free_port


class BackgroundServer:
    """Runs a `socketserver` server in a daemon thread until `stop()`.

    A short poll keeps `stop()` quick; the default half second adds up over a test suite.
    """

    def __init__(self, server: socketserver.BaseServer) -> None:
        self.server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and close the port (connections are refused from now on)."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's server (the AWS APIs over real HTTP) on a free loopback port; yields its URL."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
