"""Helpers for tests against the real RabbitMQ on this machine."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiohttp

from gateway.model import Version
from gateway.simulate import Message

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass
class Topology:
    """Uniquely named mailboxes and exchanges, with queues that collect what the gateway emits."""

    prefix: str

    @property
    def q22(self) -> str:
        return f"{self.prefix}.mailbox-2.2"

    @property
    def q30(self) -> str:
        return f"{self.prefix}.mailbox-3.0"

    @property
    def exchange(self) -> str:
        return f"{self.prefix}.case-events"

    @property
    def quarantine_exchange(self) -> str:
        return f"{self.prefix}.quarantine"

    @property
    def events_queue(self) -> str:
        return f"{self.prefix}.collected-events"

    @property
    def quarantine_queue(self) -> str:
        return f"{self.prefix}.collected-quarantine"


async def declare() -> Topology:
    topo = Topology(f"test-{uuid.uuid4().hex[:8]}")
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for name in (topo.q22, topo.q30):
            await channel.declare_queue(name, durable=True)
        for exchange_name, queue_name in ((topo.exchange, topo.events_queue),
                                          (topo.quarantine_exchange, topo.quarantine_queue)):
            exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC,
                                                      durable=True)
            queue = await channel.declare_queue(queue_name, durable=True)
            await queue.bind(exchange, "#")
    return topo


def mailbox(topo: Topology, message: Message) -> str:
    """A simulated message's mailbox: 2.2 to one, 3.0 and the unreadable ones to the other."""
    return topo.q22 if message.version is Version.V2_2 else topo.q30


def streams(topo: Topology, messages: Sequence[Message]) -> list[tuple[str, bytes]]:
    """(mailbox, body) in arrival order, for the steady publishers."""
    return [(mailbox(topo, m), m.body) for m in messages]


async def publish_simulated(topo: Topology, messages: Sequence[Message]) -> None:
    """Every message into its mailbox, all at once."""
    for queue in (topo.q22, topo.q30):
        await publish(queue, [body for q, body in streams(topo, messages) if q == queue])


async def publish(queue: str, bodies: Sequence[bytes]) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await asyncio.gather(*(
            channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), queue)
            for body in bodies
        ))


async def publish_steadily(
    streams: Sequence[tuple[str, bytes]], rate: float, published: list[int] | None = None
) -> None:
    """Publish (queue, body) pairs in order at about `rate` messages/s, persistent, with
    confirms, retrying the same message through a broker restart. `published[0]` counts."""
    connection = await aio_pika.connect_robust(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for index, (queue, body) in enumerate(streams):
            while True:
                try:
                    await channel.default_exchange.publish(
                        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        queue, timeout=5)
                    break
                except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError,
                        TimeoutError):
                    await asyncio.sleep(0.2)  # the broker is restarting: the same again
            if published is not None:
                published[0] = index + 1
            if index % 20 == 0:
                await asyncio.sleep(20 / rate)


async def drain(queue: str, idle_s: float = 1.0) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Everything in the queue (acknowledged), stopping after `idle_s` without a message."""
    messages = []
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        q = await channel.get_queue(queue)
        while True:
            message = await q.get(fail=False, timeout=5)
            if message is None:
                await asyncio.sleep(idle_s)
                message = await q.get(fail=False, timeout=5)
                if message is None:
                    return messages
            await message.ack()
            messages.append(message)


async def depth(queue: str) -> int:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, durable=True, passive=True)
        return declared.declaration_result.message_count or 0


async def delete(topo: Topology) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for name in (topo.q22, topo.q30, topo.events_queue, topo.quarantine_queue):
            await channel.queue_delete(name)
        for name in (topo.exchange, topo.quarantine_exchange):
            await channel.exchange_delete(name)


def config_toml(topo: Topology, store: str, extra: str = "") -> str:
    return f"""
[store]
path = "{store}"
batch_size = 200
[[sources]]
type = "amqp"
url = "{AMQP_URL}"
queue = "{topo.q22}"
prefetch = 300
[[sources]]
type = "amqp"
url = "{AMQP_URL}"
queue = "{topo.q30}"
prefetch = 300
[[sinks]]
type = "amqp"
url = "{AMQP_URL}"
exchange = "{topo.exchange}"
quarantine_exchange = "{topo.quarantine_exchange}"
[http]
listen = "127.0.0.1:0"
{extra}
"""


def rabbitmqctl(*args: str) -> str:
    """Runs `rabbitmqctl` against this machine's broker; returns the last line it printed."""
    printed = subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True,
                             text=True).stdout.strip().splitlines()
    return printed[-1] if printed else ""


async def readyz(http: int) -> tuple[int, dict[str, Any]]:
    """A gateway's `/readyz` on this port: the status and the body."""
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{http}/readyz") as response:
        return response.status, dict(await response.json())
