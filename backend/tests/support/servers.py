"""Test servers on loopback in a background thread: one way to start and stop them.

(The Cognito emulator is `devtools.cognito_emulator`, which `make run` runs too.)
"""

from __future__ import annotations

import socketserver
import threading


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
