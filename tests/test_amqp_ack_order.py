"""A batch is acknowledged without acknowledging a delivery that is not in it.

One multiple-ack per channel settles a batch cheaply, but it settles every outstanding
delivery up to its tag. Under backpressure the intake can hold deliveries out of order (each
delivery is a task, and a task woken from a full queue can be overtaken), so a batch may end
at a tag whose older neighbour is still waiting outside it. Acked with it, that neighbour was
lost whenever its own batch then failed (seen in the disk-full test: mailboxes empty, 1-21
messages never stored).
"""

from __future__ import annotations

import asyncio
import logging

import pytest

import adapters.amqp
from adapters.amqp import AmqpSource, plain_connector
from gateway import config as cfg
from gateway.ports import Delivery
from tests import brokers


@pytest.fixture(autouse=True)
def full_prefetch_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """These hold up to `prefetch` deliveries unsettled at once; the narrow start
    (test_amqp_prefetch.py) would hold back all but 10 of them."""
    monkeypatch.setattr(adapters.amqp, "START_PREFETCH", 1000)


async def _consume(
    topo: brokers.Topology, intake: asyncio.Queue[Delivery], prefetch: int = 10
) -> AmqpSource:
    spec = cfg.AmqpSource(url=brokers.AMQP_URL, queue=topo.q22, prefetch=prefetch)
    source = AmqpSource(spec, intake, plain_connector(spec.url, None, "test"))
    assert await source.start(asyncio.Event())
    return source


async def _three_deliveries(topo: brokers.Topology) -> tuple[AmqpSource, list[Delivery]]:
    intake: asyncio.Queue[Delivery] = asyncio.Queue()
    source = await _consume(topo, intake)
    deliveries = [await asyncio.wait_for(intake.get(), 10) for _ in range(3)]
    return source, deliveries


def test_settling_a_later_delivery_leaves_an_earlier_one_unacknowledged() -> None:
    async def scenario() -> tuple[int, int]:
        topo = await brokers.declare()
        try:
            await brokers.publish(topo.q22, [b"first", b"second", b"third"])
            source, (_unsettled, second, third) = await _three_deliveries(topo)
            await source.settle([third], [])  # a batch holding only the newest one
            await source.fail([second])  # its batch could not be stored: back to the broker
            await asyncio.sleep(0.3)
            await source.close()  # the first was never settled: the broker must keep it
            await asyncio.sleep(0.3)
            left = await brokers.depth(topo.q22)
            redelivered = [m.body for m in await brokers.drain(topo.q22, idle_s=0.5)]
            return left, len([b for b in redelivered if b in (b"first", b"second")])
        finally:
            await brokers.delete(topo)

    left, back = asyncio.run(scenario())
    assert left == 2, "the unsettled first and the failed second are back in the mailbox"
    assert back == 2


def test_a_whole_batch_is_still_settled_by_one_multiple_ack() -> None:
    async def scenario() -> int:
        topo = await brokers.declare()
        try:
            await brokers.publish(topo.q22, [b"first", b"second", b"third"])
            source, deliveries = await _three_deliveries(topo)
            plans = source._plan(deliveries)
            await source.settle(deliveries, [])
            await asyncio.sleep(0.3)
            await source.close()
            assert [(len(messages), multiple) for messages, multiple in plans] == [(1, True)]
            return await brokers.depth(topo.q22)
        finally:
            await brokers.delete(topo)

    assert asyncio.run(scenario()) == 0


def test_deliveries_reach_a_full_intake_in_the_order_they_came() -> None:
    bodies = [b"%03d" % i for i in range(200)]

    async def scenario() -> list[bytes]:
        topo = await brokers.declare()
        try:
            await brokers.publish(topo.q22, bodies)
            intake: asyncio.Queue[Delivery] = asyncio.Queue(maxsize=1)  # always full
            source = await _consume(topo, intake, prefetch=200)
            got = []
            for _ in bodies:
                delivery = await asyncio.wait_for(intake.get(), 10)
                got.append(delivery.raw.body)
                await source.settle([delivery], [])
                await asyncio.sleep(0)  # newer deliveries get a chance to overtake
            await source.close()
            return got
        finally:
            await brokers.delete(topo)

    assert asyncio.run(scenario()) == bodies


def test_acks_on_a_lost_channel_are_given_up_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Until stop 18 each ack of a batch settled message by message on a channel that had
    gone logged a warning of its own: up to a batch (500) of them after a broker restart."""
    async def scenario() -> tuple[int, int]:
        topo = await brokers.declare()
        try:
            await brokers.publish(topo.q22, [b"%02d" % i for i in range(20)])
            intake: asyncio.Queue[Delivery] = asyncio.Queue()
            source = await _consume(topo, intake, prefetch=20)
            deliveries = [await asyncio.wait_for(intake.get(), 10) for _ in range(20)]
            batch = deliveries[1::2]  # not a prefix: settled message by message
            assert [multiple for _, multiple in source._plan(batch)] == [False]
            assert source._channel is not None
            await source._channel.close()  # the channel is gone before the batch is settled
            caplog.clear()
            await source.settle(batch, [])
            warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
            await source.close()
            await asyncio.sleep(0.3)
            return len(warned), await brokers.depth(topo.q22)
        finally:
            await brokers.delete(topo)

    caplog.set_level(logging.INFO, logger="aes_gateway.amqp")
    warned, left = asyncio.run(scenario())
    assert warned == 1
    assert left == 20, "every delivery of the lost channel is back in the mailbox"
