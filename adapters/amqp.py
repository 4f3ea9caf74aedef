"""AMQP 0-9-1 with aio-pika: Beskedfordeler mailboxes in, the canonical topic exchange out."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import aio_pika
import aiormq
import aiormq.abc
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from pamqp.common import FieldTable

from adapters.sqlite import QuarantineRow
from adapters.tls import client_context
from gateway.config import AmqpSink as AmqpSinkConfig
from gateway.config import AmqpSource as AmqpSourceConfig
from gateway.config import TlsConfig, source_name
from gateway.decide import Result
from gateway.envelope import DEFAULT_MAX_BYTES, oversized_keep, oversized_said
from gateway.logs import mask
from gateway.metrics import version
from gateway.model import RawMessage
from gateway.pipeline import REMIND_EVERY_S, Outage
from gateway.ports import Delivery, OutboxRow

log = logging.getLogger("aes_gateway.amqp")

Connector = Callable[[], Awaitable[AbstractRobustConnection]]
Properties = aiormq.spec.Basic.Properties
PERSISTENT: Final = 2  # delivery mode: written to disk by the broker
AMQP_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, OSError, asyncio.TimeoutError)
# A mailbox is consumed with a prefetch of START_PREFETCH at first, and with its `prefetch`
# once WIDEN_AFTER messages were settled at SMALL_MESSAGE bytes or less on average. Each
# message in flight is held whole, so a backlog of big ones (met again after an out-of-memory
# kill) comes a few at a time, not `prefetch` x 16 MiB at once.
START_PREFETCH: Final = 10
WIDEN_AFTER: Final = 100
SMALL_MESSAGE: Final = 64 * 1024


def client_properties(name: str) -> FieldTable:
    """What the broker shows of a connection (RabbitMQ's management UI and `rabbitmqctl
    list_connections client_properties`): the gateway, its release, and the source or sink
    that opened it. Without it, the Beskedfordeler's or a municipality's broker operator saw
    an unnamed Python client."""
    return {"connection_name": f"aes-gateway {version()} {name}"}


def plain_connector(url: str, tls: TlsConfig | None, name: str) -> Connector:
    """User and password from the URL (local brokers); TLS verified for amqps://. `name`:
    the source's or sink's, for the broker to show."""

    async def connect() -> AbstractRobustConnection:
        ssl_context = client_context(tls) if url.startswith("amqps") else None
        # reconnect 1 s after a loss (aio-pika's default is 5 s): a broker restart costs less
        return await aio_pika.connect_robust(url, ssl_context=ssl_context, timeout=10,
                                             reconnect_interval=1,
                                             client_properties=client_properties(name))

    return connect


class Retries:
    """The log of a retry loop at start-up (no broker yet, no mailbox yet), as of any outage:
    the first failure, a reminder every REMIND_EVERY_S (10 minutes) while it lasts, and how
    long it lasted once it works. Until stop 19 each retry had its line: two a minute for
    each mailbox for as long as it was missing."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._outage: Outage | None = None

    def failed(self, what: str, error: str) -> None:
        extra = {"source": self.source, "error": mask(error)}
        if self._outage is None:
            self._outage = Outage()
            log.warning("%s; retrying, with pauses growing to 30 s (logged again every %.0f "
                        "minutes while it lasts)", what, REMIND_EVERY_S / 60, extra=extra)
        elif self._outage.remind():
            log.warning("%s, still, after %.0f s (%d attempts)", what, self._outage.lasted_s(),
                        self._outage.attempts, extra=extra)
        self._outage.attempts += 1

    def succeeded(self, what: str) -> None:
        if self._outage is not None:
            log.info("%s after %.0f s (%d failed attempts)", what, self._outage.lasted_s(),
                     self._outage.attempts, extra={"source": self.source})
            self._outage = None


async def connect_with_backoff(
    connect: Connector, what: str, stop: asyncio.Event, max_backoff_s: float = 30.0
) -> AbstractRobustConnection | None:
    """The first connection; aio-pika's robust connection reconnects after that."""
    backoff = 0.5
    retries = Retries(what)
    while not stop.is_set():
        try:
            connection = await connect()
        except AMQP_ERRORS as exc:
            retries.failed(f"cannot connect {what}", str(exc) or repr(exc))
            await pause(stop, backoff)
            backoff = min(backoff * 2, max_backoff_s)
        else:
            retries.succeeded(f"connected {what}")
            return connection
    return None


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, but no longer than until `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class AmqpDelivery:
    __slots__ = ("channel_key", "message", "raw", "settler")

    def __init__(self, raw: RawMessage, message: AbstractIncomingMessage, settler: AmqpSource):
        self.raw = raw
        self.message = message
        self.settler = settler
        # which channel delivered it; read now, while the channel is certainly open
        self.channel_key = id(message.channel)


class AmqpSource:
    """Consumes one queue with manual acks; acknowledges a committed batch with one multiple-ack
    per channel where that settles exactly the batch, else one ack per message. Messages of a
    channel lost before their ack are redelivered by the broker and recognised as
    redeliveries."""

    def __init__(
        self, config: AmqpSourceConfig, intake: asyncio.Queue[Delivery], connect: Connector,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.config = config
        self.intake = intake
        self.connect = connect
        self.keep = oversized_keep(max_bytes)
        self.name = source_name(config)
        self.last_message_at: float | None = None
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        # Delivery tags handed to the intake and not yet settled, per channel: a multiple-ack
        # settles every outstanding tag up to its own, so it is used only when those are all
        # in the batch.
        self._outstanding: dict[int, set[int]] = {}
        self._in_order = asyncio.Lock()  # FIFO: deliveries reach the intake in broker order
        self.window = min(config.prefetch, START_PREFETCH)  # the consumer's prefetch
        # messages settled while the window is narrow, and their bytes: WIDEN_AFTER at a time
        self._narrow_count = self._narrow_bytes = 0
        self._widening: asyncio.Task[None] | None = None

    async def start(self, stop: asyncio.Event, max_backoff_s: float = 30.0) -> bool:
        """Connect and consume; until `stop`, retry a mailbox that does not exist (yet)."""
        self._connection = await connect_with_backoff(self.connect, self.name, stop)
        if self._connection is None:
            return False
        backoff = 0.5
        retries = Retries(self.name)
        while not stop.is_set():
            channel = await self._connection.channel()
            try:
                await channel.set_qos(prefetch_count=self.window)
                # A robust channel restores (after a reconnect) only the queues it declared,
                # with their consumers. The declare is passive: a mailbox is the
                # Beskedfordeler's to create, never the gateway's.
                queue = await channel.declare_queue(self.config.queue, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity as exc:
                retries.failed(f"mailbox {self.config.queue} does not exist", repr(exc))
            except AMQP_ERRORS as exc:
                retries.failed(f"cannot open mailbox {self.config.queue}", repr(exc))
            else:
                self._channel, self._queue = channel, queue
                self._consumer_tag = await queue.consume(self._on_message, no_ack=False)
                retries.succeeded(f"mailbox {self.config.queue} opened")
                log.info("consuming", extra={"source": self.name})
                return True
            with contextlib.suppress(*AMQP_ERRORS, RuntimeError):
                await channel.close()  # the broker closed it; aio-pika must not reopen it
            await pause(stop, backoff)
            backoff = min(backoff * 2, max_backoff_s)
        return False

    @property
    def connected(self) -> bool:
        """Whether the broker delivers to this source now: false while the connection is down
        and while the mailbox is gone (the broker cancels the consumer of a deleted queue).
        aio-pika restores both by itself: the connection, then the consumer once the queue
        exists again."""
        if self._channel is None or self._consumer_tag is None:
            return False
        return consuming(self._channel, self._consumer_tag)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.last_message_at = asyncio.get_running_loop().time()
        body = message.body
        if len(body) > self.keep:  # kept as the push receiver and replay keep one
            log.warning(oversized_said("message", len(body), self.keep),
                        extra={"source": self.name})
            body = body[: self.keep]
            if isinstance(message, aio_pika.IncomingMessage):  # not held whole in the intake
                message.body = b""
        raw = RawMessage(body, self.name, dt.datetime.now(dt.UTC))
        delivery = AmqpDelivery(raw, message, self)
        self._outstanding.setdefault(delivery.channel_key, set()).add(message.delivery_tag or 0)
        # Each delivery is a task of its own; waiting on a full intake, a later one could
        # overtake an earlier one. The lock queues them in the order they came.
        async with self._in_order:
            await self.intake.put(delivery)  # bounded: backpressure

    async def _widen(self) -> None:
        """Consume with the full prefetch. A basic.qos applies to the consumers started after
        it, so a new consumer is started before the old one is cancelled: the mailbox is
        consumed all along."""
        channel, queue, old = self._channel, self._queue, self._consumer_tag
        try:
            if channel is None or queue is None or old is None or not self.connected:
                return  # tried again at a later settle
            async with asyncio.timeout(10):
                await channel.set_qos(prefetch_count=self.config.prefetch)
                self._consumer_tag = await queue.consume(self._on_message, no_ack=False)
                self.window = self.config.prefetch
                await queue.cancel(old)
            log.info("mailbox consumed with prefetch %d: its messages are small", self.window,
                     extra={"source": self.name})
        except AMQP_ERRORS as exc:
            log.info("prefetch not widened yet (%r)", exc, extra={"source": self.name})
        finally:
            self._widening = None

    async def stop_consuming(self) -> None:
        """Cancel the consumer. Not while the broker is away: aio-pika would wait for it to
        come back (a SIGTERM during an outage never finished), and there is no consumer on
        the broker to cancel."""
        if self._widening is not None:
            self._widening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._widening
        if self._queue is not None and self._consumer_tag is not None and self.connected:
            try:
                async with asyncio.timeout(5):
                    await self._queue.cancel(self._consumer_tag)
            except AMQP_ERRORS:
                log.info("consumer already gone", extra={"source": self.name})
        self._consumer_tag = None

    async def close(self) -> None:
        if self._widening is not None:
            self._widening.cancel()
        self._consumer_tag = None
        if self._connection is not None:
            await self._connection.close()

    async def settle(self, deliveries: Sequence[Delivery], results: Sequence[Result]) -> None:
        await self._settle(deliveries, ack=True)

    async def fail(self, deliveries: Sequence[Delivery]) -> None:
        await self._settle(deliveries, ack=False)

    async def _settle(self, deliveries: Sequence[Delivery], ack: bool) -> None:
        """Ack (or nack for redelivery) the deliveries, and forget them as outstanding."""
        plan = self._plan(deliveries)
        if self.window < self.config.prefetch and self._widening is None:
            self._narrow_count += len(deliveries)
            self._narrow_bytes += sum(len(delivery.raw.body) for delivery in deliveries)
            if self._narrow_count >= WIDEN_AFTER:  # judged by each WIDEN_AFTER messages anew
                if self._narrow_bytes <= SMALL_MESSAGE * self._narrow_count:
                    self._widening = asyncio.create_task(self._widen(),
                                                         name=f"widen {self.name}")
                self._narrow_count = self._narrow_bytes = 0
        for key, messages in _by_channel(deliveries).items():
            outstanding = self._outstanding.get(key)
            if outstanding is not None:
                outstanding -= {message.delivery_tag or 0 for message in messages}
                if not outstanding:
                    del self._outstanding[key]
        for messages, multiple in plan:
            for message in messages:
                try:
                    if ack:
                        await message.ack(multiple=multiple)
                    else:
                        await message.nack(multiple=multiple, requeue=True)
                except (*AMQP_ERRORS, RuntimeError) as exc:
                    # The channel that delivered these is gone, and with it every delivery
                    # tag it gave: the broker hands them all back. Said once, not per message.
                    log.warning("%s of %d deliveries lost (%r); the broker will redeliver them",
                                "ack" if ack else "nack", len(messages), exc,
                                extra={"source": self.name})
                    break

    def _plan(
        self, deliveries: Sequence[Delivery]
    ) -> list[tuple[list[AbstractIncomingMessage], bool]]:
        """Per channel: ([the newest message], True) when a multiple-ack up to it settles
        exactly these deliveries of the outstanding ones, else (every message, False)."""
        plan = []
        for key, messages in _by_channel(deliveries).items():
            tags = {message.delivery_tag or 0 for message in messages}
            newest = max(messages, key=lambda message: message.delivery_tag or 0)
            top = newest.delivery_tag or 0
            only_these = all(tag in tags for tag in self._outstanding.get(key, ()) if tag <= top)
            plan.append(([newest], True) if only_these else (messages, False))
        return plan


def consuming(channel: AbstractChannel, consumer_tag: str) -> bool:
    """Whether `consumer_tag` consumes on the channel's current AMQP channel.

    aio-pika hands out that channel only by awaiting (and the wait lasts as long as an
    outage), while readiness is asked synchronously; so this reads the one aio-pika holds,
    a private attribute. `tests/test_amqp_ready.py` pins it."""
    if channel.is_closed:
        return False
    underlay = getattr(channel, "_channel", None)
    return underlay is not None and consumer_tag in underlay.channel.consumers


def _by_channel(deliveries: Sequence[Delivery]) -> dict[int, list[AbstractIncomingMessage]]:
    channels: dict[int, list[AbstractIncomingMessage]] = {}
    for delivery in deliveries:
        assert isinstance(delivery, AmqpDelivery)  # noqa: S101 - settled by its own source
        channels.setdefault(delivery.channel_key, []).append(delivery.message)
    return channels


def routing_key(row: OutboxRow) -> str:
    """`<municipality_code>.<category>.<event_type>`; `unknown` when AES does not know it."""
    return f"{row.municipality_code or 'unknown'}.{row.category}.{row.event_type}"


class AmqpSink:
    """Publishes the outbox to a durable topic exchange with publisher confirms, a window of
    messages in flight at once; quarantined messages go to the quarantine exchange.

    aio-pika declares the exchanges (and owns the connection); the messages go out through
    the aiormq channel under it. aio-pika's `Exchange.publish` builds a `Message` and converts
    it to these same properties: 162-169 us of CPU a confirmed message against 94-95 us
    (`bench/publish.py`).
    """

    def __init__(self, config: AmqpSinkConfig, connect: Connector, name: str) -> None:
        self.config = config
        self.connect = connect
        self.name = name
        self._connection: AbstractRobustConnection | None = None
        self._declared_on: AbstractChannel | None = None  # held: aio-pika keeps it weakly
        self._channel: aiormq.abc.AbstractChannel | None = None
        # The events' and the quarantine's relays open it at once: one connection, one channel.
        self._opening = asyncio.Lock()

    async def _open(self) -> aiormq.abc.AbstractChannel:
        async with self._opening:
            if self._channel is None:
                if self._connection is None:
                    self._connection = await self.connect()
                channel = await self._connection.channel(publisher_confirms=True)
                await channel.declare_exchange(
                    self.config.exchange, aio_pika.ExchangeType.TOPIC, durable=True
                )
                if self.config.quarantine_exchange:
                    await channel.declare_exchange(
                        self.config.quarantine_exchange, aio_pika.ExchangeType.TOPIC,
                        durable=True,
                    )
                self._declared_on = channel
                self._channel = await channel.get_underlay_channel()
            return self._channel

    async def send(self, rows: Sequence[OutboxRow]) -> None:
        await self._publish(self.config.exchange, [
            (row.body, routing_key(row), Properties(
                content_type="application/json", message_id=row.event_id, delivery_mode=PERSISTENT,
            ))
            for row in rows
        ])

    async def send_quarantine_headers(self, rows: Sequence[QuarantineRow]) -> None:
        """The quarantine without the raw messages, and with any CPR in a reason's detail
        masked (for sinks that must not see a CPR): a detail quotes the refused input."""
        await self.send_quarantine(rows, with_body=False)

    async def send_quarantine(self, rows: Sequence[QuarantineRow], with_body: bool = True) -> None:
        if not self.config.quarantine_exchange:
            return
        shown = (lambda text: text) if with_body else mask
        await self._publish(self.config.quarantine_exchange, [
            (row.body if with_body else b"", f"{row.version or 'unknown'}.{row.reason}",
             Properties(
                content_type="application/xml", message_id=row.message_key,
                delivery_mode=PERSISTENT,
                headers={"reason": row.reason, "detail": shown(row.detail or ""),
                         "version": row.version or "unknown", "source": shown(row.source)},
            ))
            for row in rows
        ])

    async def _publish(self, exchange: str, messages: list[tuple[bytes, str, Properties]]) -> None:
        try:
            await _confirmed(await self._open(), exchange, messages)
        except BaseException:
            # a fresh channel on the next try: one that a broker restart left behind may
            # never come back, and the relay retries this batch
            self._channel = self._declared_on = None
            raise

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()


async def _confirmed(
    channel: aiormq.abc.AbstractChannel, exchange: str,
    messages: list[tuple[bytes, str, Properties]],
) -> None:
    """Publish all, then wait for every confirm: the window is pipelined, not one by one."""
    results = await asyncio.gather(
        *(channel.basic_publish(body, exchange=exchange, routing_key=key, properties=properties)
          for body, key, properties in messages),
        return_exceptions=True,
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise failed[0]
    nacked = [r for r in results if not isinstance(r, aiormq.spec.Basic.Ack)]
    if nacked:
        raise ConnectionError(f"broker refused {len(nacked)} of {len(results)} messages")
