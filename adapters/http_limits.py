"""The gateway's HTTP servers (the push receiver, the metrics and health port) with a bounded
number of connections, idle ones closed.

Each connection holds a file descriptor, shared with the store, the brokers and the other
port. Under systemd's default limit of 1 024, a client (or a middlebox) holding 1 100
connections open left the receiver unable to accept the Beskedfordeler's pushes; and CPython
3.11's accept loop, out of descriptors, schedules a retry per queued connection and logs each:
17 000 error lines in 10 s, growing, in a probe at stop 20. aiohttp keeps a connection that
sends nothing for an hour.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Final

from aiohttp import web

log = logging.getLogger("aes_gateway.http")

REFUSALS_LOG_EVERY_S: Final = 60.0  # connections refused over the limit: a line a minute


class _Refused(asyncio.Protocol):
    """A connection over the limit: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class Capped:
    """An aiohttp server's protocol factory, with at most `limit` connections open at once;
    over it, a connection is closed at once and counted."""

    def __init__(self, server: web.Server, limit: int, name: str) -> None:
        self.server = server
        self.limit = limit
        self.name = name
        self.refused = 0
        self._logged_at: float | None = None

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self.server.connections) < self.limit:
            return self.server()
        self.refused += 1
        now = asyncio.get_running_loop().time()
        if self._logged_at is None or now - self._logged_at >= REFUSALS_LOG_EVERY_S:
            self.log_refused()
            self._logged_at = now
        return _Refused()

    def log_refused(self) -> None:
        """The connections refused since the last such line, if any."""
        if self.refused:
            log.warning("%s: connections refused, %d already open (max_connections)",
                        self.name, self.limit, extra={"source": self.name, "refused": self.refused})
            self.refused = 0


class CappedServer:
    """`app` served on `listen` (host:port), at most `max_connections` at once, a connection
    with no request in flight closed after `idle_seconds`."""

    def __init__(self, app: web.Application, listen: str, name: str, max_connections: int,
                 idle_seconds: float) -> None:
        self.listen = listen
        # keepalive_timeout: aiohttp's default keeps an idle connection for an hour
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=idle_seconds)
        self._name = name
        self._limit = max_connections
        self._server: asyncio.Server | None = None
        self._capped: Capped | None = None

    async def start(self, ssl_context: ssl.SSLContext | None = None,
                    handshake_timeout: float | None = None) -> None:
        await self._runner.setup()
        assert self._runner.server is not None  # noqa: S101 - made by setup()
        self._capped = Capped(self._runner.server, self._limit, self._name)
        host, _, port = self.listen.rpartition(":")
        try:
            self._server = await asyncio.get_running_loop().create_server(
                self._capped, host or None, int(port), ssl=ssl_context, reuse_address=True,
                ssl_handshake_timeout=handshake_timeout if ssl_context else None)
        except BaseException:
            await self._runner.cleanup()
            raise

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()  # no new connections; the runner ends the open ones
        if self._capped is not None:
            self._capped.log_refused()  # those not yet counted in a line
        await self._runner.cleanup()
