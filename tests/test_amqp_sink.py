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
        connect = plain_connector(brokers.AMQP_URL, None, "test")

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


def test_a_quarantine_exchange_without_cpr_gets_the_reason_with_any_cpr_masked() -> None:
    """A reason's detail quotes the refused input, which can be a CPR: a sink configured
    not to see one got it in the detail header."""

    async def scenario() -> dict[str, object]:
        topo = await brokers.declare()
        config = AmqpSinkConfig(url=brokers.AMQP_URL, exchange=topo.exchange,
                                quarantine_exchange=topo.quarantine_exchange, cpr="omitted")
        sink = AmqpSink(config, plain_connector(brokers.AMQP_URL, None, "test"), "amqp:test")
        try:
            await sink.send_quarantine_headers([QuarantineRow(
                1, "key-1", None, "unknown_beskedtype", "Beskedtype '1401851234' unknown",
                "file:140185-1234.xml", 0, b"<x>1401851234</x>")])
            await sink.close()
            (message,) = await brokers.drain(topo.quarantine_queue, idle_s=0.3)
        finally:
            await brokers.delete(topo)
        assert message.body == b""
        return dict(message.headers or {})

    headers = asyncio.run(scenario())
    assert headers["detail"] == "Beskedtype '140185-****' unknown"
    assert headers["source"] == "file:140185-****.xml"
