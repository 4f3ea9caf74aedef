"""A mailbox is consumed 10 messages at a time at first, and with its `prefetch` once its
messages prove small. Each message in flight is held whole: a backlog of big messages met
with the full prefetch (again after an out-of-memory kill) was `prefetch` x 16 MiB at once.
40 messages of 15 MB with `prefetch = 300`: peak RSS 642 MB before stop 24, 391 MB after."""

from __future__ import annotations

import asyncio
import subprocess

from adapters.amqp import START_PREFETCH, WIDEN_AFTER, AmqpSource, plain_connector
from gateway import config as cfg
from gateway.ports import Delivery
from tests import brokers


def broker_prefetch(queue: str) -> list[int]:
    """The prefetch of each consumer of `queue`, as the broker has it."""
    printed = subprocess.run(["rabbitmqctl", "list_consumers", "--quiet", "--no-table-headers",
                              "queue_name", "prefetch_count"], check=True, capture_output=True,
                             text=True).stdout
    return [int(count) for name, count in (line.split() for line in printed.splitlines())
            if name == queue]


async def consumed(bodies: list[bytes]) -> tuple[int, int, list[int], list[bytes]]:
    """(deliveries in hand before any is settled, the window at the end, the broker's
    prefetch at the end, the bodies in the order they came) of a source with prefetch 300."""
    topo = await brokers.declare()
    try:
        await brokers.publish(topo.q22, bodies)
        intake: asyncio.Queue[Delivery] = asyncio.Queue()
        spec = cfg.AmqpSource(url=brokers.AMQP_URL, queue=topo.q22, prefetch=300)
        source = AmqpSource(spec, intake, plain_connector(spec.url, None, "test"))
        assert await source.start(asyncio.Event())
        await asyncio.sleep(0.5)
        in_hand = intake.qsize()
        got = []
        while len(got) < len(bodies):
            delivery = await asyncio.wait_for(intake.get(), 10)
            got.append(delivery.raw.body)
            await source.settle([delivery], [])
        await asyncio.sleep(0.3)  # a widening under way ends
        prefetch = await asyncio.to_thread(broker_prefetch, topo.q22)
        window = source.window
        await source.close()
        return in_hand, window, prefetch, got
    finally:
        await brokers.delete(topo)


def test_small_messages_widen_the_window_to_the_prefetch_and_keep_their_order() -> None:
    bodies = [b"<small n='%03d'/>" % n for n in range(WIDEN_AFTER + 50)]
    in_hand, window, prefetch, got = asyncio.run(consumed(bodies))
    assert in_hand == START_PREFETCH == 10
    assert window == 300
    assert prefetch == [300]  # one consumer: the narrow one was cancelled
    assert got == bodies


def test_big_messages_keep_the_window_narrow() -> None:
    bodies = [b"<big n='%03d'>" % n + b" " * 100_000 for n in range(WIDEN_AFTER + 20)]
    in_hand, window, prefetch, got = asyncio.run(consumed(bodies))
    assert in_hand == 10
    assert window == 10
    assert prefetch == [10]
    assert got == bodies
