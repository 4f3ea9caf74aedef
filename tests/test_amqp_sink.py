"""The AMQP sink against the real RabbitMQ: one connection however many relays feed it."""

from __future__ import annotations

import asyncio

from aio_pika.abc import AbstractRobustConnection

from adapters.amqp import AmqpSink, plain_connector
from adapters.sqlite import QuarantineRow
from gateway.config import AmqpSink as AmqpSinkConfig
from gateway.ports import OutboxRow
from tests import brokers


def test_the_events_and_the_quarantine_relay_share_one_connection_closed_at_the_end() -> None:
    """Both relays of a sink send at once when the gateway starts. Each used to open a
    connection of its own; the one it kept last was closed, the other left open."""

    async def scenario() -> tuple[list[AbstractRobustConnection], int, int]:
        topo = await brokers.declare()
        opened: list[AbstractRobustConnection] = []
        connect = plain_connector(brokers.AMQP_URL, None)

        async def counting() -> AbstractRobustConnection:
            connection = await connect()
            opened.append(connection)
            return connection

        config = AmqpSinkConfig(url=brokers.AMQP_URL, exchange=topo.exchange,
                                quarantine_exchange=topo.quarantine_exchange)
        sink = AmqpSink(config, counting, "amqp:test")
        try:
            await asyncio.gather(
                sink.send([OutboxRow(1, "event-1", "101", "case_change", "reported", b"{}")]),
                sink.send_quarantine([QuarantineRow(1, "key-1", "3.0", "not_xml", None,
                                                    "test", 0, b"<")]),
            )
            await sink.close()
            events = await brokers.drain(topo.events_queue, idle_s=0.3)
            quarantined = await brokers.drain(topo.quarantine_queue, idle_s=0.3)
        finally:
            await brokers.delete(topo)
        return opened, len(events), len(quarantined)

    opened, events, quarantined = asyncio.run(scenario())
    assert (events, quarantined) == (1, 1), "both went out"
    assert len(opened) == 1, f"{len(opened)} connections opened"
    assert all(connection.is_closed for connection in opened), "none left open"
