"""The push receiver (…BeskedModtag): BFO POSTs ModtagBeskedInput; we answer StatusKode 20 only
after the message's outcome is committed, and 40 when we cannot accept it now."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Final

from aiohttp import web

from adapters.http_limits import CappedServer
from adapters.tls import ClientRules, server_context, subject_text
from gateway.config import PushSource as PushConfig
from gateway.config import source_name
from gateway.decide import Result
from gateway.envelope import oversized_keep, oversized_said
from gateway.model import RawMessage
from gateway.ports import Delivery

log = logging.getLogger("aes_gateway.push")

RECEIVED: Final = 20
NOT_NOW: Final = 40
ANSWER: Final = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<ModtagBeskedOutput xmlns="urn:oio:sts:1.0.0"><StandardRetur xmlns="urn:oio:sagdok:3.0.0">'
    "<StatusKode>{code}</StatusKode><FejlbeskedTekst>{text}</FejlbeskedTekst></StandardRetur>"
    "</ModtagBeskedOutput>"
)


def answer(code: int, text: str = "") -> web.Response:
    return web.Response(body=ANSWER.format(code=code, text=text).encode(),
                        content_type="application/xml", charset="utf-8")


class PushDelivery:
    __slots__ = ("done", "raw", "settler")

    def __init__(self, raw: RawMessage, settler: PushReceiver) -> None:
        self.raw = raw
        self.settler = settler
        self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()


class Overloaded(Exception):
    """A push body would take the receiver past its max_held_bytes."""


class Held:
    """The bytes of one push body held in memory, counted against the receiver's budget until
    `release`. A body held alone fits whatever its size."""

    def __init__(self, receiver: PushReceiver) -> None:
        self.receiver = receiver
        self.size = 0

    def grow(self, more: int) -> bool:
        receiver = self.receiver
        if (receiver.held > self.size
                and receiver.held + more > receiver.config.max_held_bytes):
            return False
        receiver.held += more
        self.size += more
        return True

    def release(self) -> None:
        self.receiver.held -= self.size
        self.size = 0


class PushReceiver:
    def __init__(
        self, config: PushConfig, intake: asyncio.Queue[Delivery], max_bytes: int,
        on_not_now: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.config = config
        self.on_not_now = on_not_now  # called with the reason of each answer 40 (PUSH_NOT_NOW)
        self.intake = intake
        self.name = source_name(config)
        self.connected = False
        self.last_message_at: float | None = None
        self._http: CappedServer | None = None
        self._accepting = True
        self.max_bytes = max_bytes
        self.held = 0  # bytes of the bodies being read or waiting for their outcomes
        self._clients = ClientRules(config.tls.allowed_clients if config.tls else ())
        app = web.Application()  # the body is read in chunks, and cut at max_bytes
        app.router.add_post(config.path, self._receive)
        self.app = app

    async def _receive(self, request: web.Request) -> web.Response:
        if self._clients.rules:
            cert = request.transport.get_extra_info("peercert") if request.transport else None
            if not self._clients.allow(cert):  # verified, but not the Beskedfordeler's
                log.warning("push refused: client certificate not in allowed_clients",
                            extra={"source": self.name, "subject": subject_text(cert)})
                return web.Response(status=403, text="client certificate not allowed\n")
        if not self._accepting:
            return self._not_now("shutting_down", "shutting down")
        held = Held(self)
        try:
            return await self._receive_held(request, held)
        finally:
            held.release()

    async def _receive_held(self, request: web.Request, held: Held) -> web.Response:
        # the declared length, reserved before the body is read
        if not held.grow(min(request.content_length or 0, oversized_keep(self.max_bytes))):
            return self._not_now("held_bytes", "overloaded")
        try:  # a client that trickles its body must not hold a connection for ever
            async with asyncio.timeout(self.config.timeout_seconds):
                body = await self._read(request, held)
        except TimeoutError:
            log.warning("push body not received within %.0f s", self.config.timeout_seconds,
                        extra={"source": self.name})
            return self._not_now("body_timeout", "body not received in time")
        except Overloaded:
            return self._not_now("held_bytes", "overloaded")
        self.last_message_at = asyncio.get_running_loop().time()
        delivery = PushDelivery(RawMessage(body, self.name, dt.datetime.now(dt.UTC)), self)
        try:
            self.intake.put_nowait(delivery)
        except asyncio.QueueFull:
            return self._not_now("intake_full", "overloaded")
        try:
            committed = await asyncio.wait_for(
                asyncio.shield(delivery.done), self.config.timeout_seconds
            )
        except TimeoutError:
            return self._not_now("commit_timeout", "not stored in time")
        return answer(RECEIVED) if committed else self._not_now("store_failed",
                                                                "store unavailable")

    def _not_now(self, reason: str, text: str) -> web.Response:
        self.on_not_now(reason)
        return answer(NOT_NOW, text)

    async def _read(self, request: web.Request, held: Held) -> bytes:
        """The body; of one over the size limit, only as much as shows that (bounded memory).
        Overloaded when more of it than `held` reserved does not fit the budget.

        An oversized message is bad input like any other: quarantined with its reason
        (`too_large`) and answered 20 once that is stored. Refused at the HTTP level (413), BFO
        would get neither answer the protocol knows, and the gateway would keep no record."""
        keep = oversized_keep(self.max_bytes)
        chunks, kept, total = [], 0, 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            total += len(chunk)
            if kept < keep:
                chunks.append(chunk[: keep - kept])
                kept += len(chunks[-1])
                if kept > held.size and not held.grow(kept - held.size):
                    raise Overloaded
        if total > keep:
            log.warning(oversized_said("push body", total, keep), extra={"source": self.name})
        return b"".join(chunks)

    async def start(self, stop: asyncio.Event) -> bool:
        self._http = CappedServer(self.app, self.config.listen, self.name,
                                  self.config.max_connections, self.config.idle_seconds)
        ssl_context = server_context(self.config.tls) if self.config.tls else None
        await self._http.start(ssl_context, handshake_timeout=self.config.timeout_seconds)
        self.connected = True
        log.info("push receiver listening", extra={"source": self.name})
        return True

    async def stop_consuming(self) -> None:
        self._accepting = False

    async def close(self) -> None:
        self.connected = False
        if self._http is not None:
            await self._http.close()

    async def settle(self, deliveries: Sequence[Delivery], results: Sequence[Result]) -> None:
        _resolve(deliveries, True)

    async def fail(self, deliveries: Sequence[Delivery]) -> None:
        _resolve(deliveries, False)


def _resolve(deliveries: Sequence[Delivery], committed: bool) -> None:
    for delivery in deliveries:
        assert isinstance(delivery, PushDelivery)  # noqa: S101 - settled by its own receiver
        if not delivery.done.done():
            delivery.done.set_result(committed)
