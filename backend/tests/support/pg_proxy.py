"""A TCP proxy in front of PostgreSQL that can drop notifications, as some real proxies do.

RDS Proxy and PgBouncer in transaction mode pass queries but not (or not reliably) the
NotificationResponse messages a LISTEN session is owed. This proxy reads the server's side of
the wire protocol message by message and forwards everything, except, when told to,
NotificationResponse ('A') messages: all of them (`drop_all`), or those another session sent
(`drop_from_other_sessions`: a session's own NOTIFY still comes back to it, the way a pooler
that happens to run the NOTIFY on the listening server connection would hand it back).

It runs on the test's event loop. Only connections without TLS can be read: the server's answer
to an SSLRequest is forwarded, and a connection whose TLS was accepted is piped unread.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import struct
from typing import Final

_SSL_REQUEST: Final = 80877103
_GSSENC_REQUEST: Final = 80877104
_NOTIFICATION_RESPONSE: Final = b"A"
_BACKEND_KEY_DATA: Final = b"K"


class Drop(enum.Enum):
    NOTHING = "nothing"
    ALL_NOTIFICATIONS = "all notifications"
    NOTIFICATIONS_FROM_OTHER_SESSIONS = "notifications from other sessions"


class PostgresProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.drop = Drop.NOTHING
        self.dropped = 0
        self.delivered = 0

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> PostgresProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> PostgresProxy:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def _serve(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        server_out: asyncio.StreamWriter | None = None
        try:
            server_in, server_out = await asyncio.open_connection(*self._upstream)
            if await self._negotiate(client_in, client_out, server_in, server_out):
                await asyncio.gather(
                    _pipe(client_in, server_out), self._forward_messages(server_in, client_out)
                )
            else:
                await asyncio.gather(_pipe(client_in, server_out), _pipe(server_in, client_out))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(task)
            client_out.close()
            if server_out is not None:
                server_out.close()

    async def _negotiate(
        self,
        client_in: asyncio.StreamReader,
        client_out: asyncio.StreamWriter,
        server_in: asyncio.StreamReader,
        server_out: asyncio.StreamWriter,
    ) -> bool:
        """Pass the untyped start of the conversation; False when TLS makes the rest unreadable."""
        while True:
            header = await client_in.readexactly(8)
            length, code = struct.unpack("!ii", header)
            body = await client_in.readexactly(length - 8)
            server_out.write(header + body)
            await server_out.drain()
            if code not in (_SSL_REQUEST, _GSSENC_REQUEST):
                return True  # the StartupMessage (or a CancelRequest): typed messages follow
            answer = await server_in.readexactly(1)  # 'S'/'G' accepted, 'N' refused
            client_out.write(answer)
            await client_out.drain()
            if answer != b"N":
                return False

    async def _forward_messages(
        self, server_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        own_pid: int | None = None
        while True:
            header = await server_in.readexactly(5)
            kind, length = header[:1], struct.unpack("!i", header[1:])[0]
            body = await server_in.readexactly(length - 4)
            if kind == _BACKEND_KEY_DATA:
                own_pid = struct.unpack("!i", body[:4])[0]
            if kind == _NOTIFICATION_RESPONSE:
                sender_pid = struct.unpack("!i", body[:4])[0]
                if self.drop is Drop.ALL_NOTIFICATIONS or (
                    self.drop is Drop.NOTIFICATIONS_FROM_OTHER_SESSIONS and sender_pid != own_pid
                ):
                    self.dropped += 1
                    continue
                self.delivered += 1
            client_out.write(header + body)
            await client_out.drain()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    while chunk := await source.read(65536):
        sink.write(chunk)
        await sink.drain()
    sink.close()
