"""Backpressure, not loss: a sink too far behind holds the intake back until it catches up."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.decide import Result
from gateway.model import RawMessage
from gateway.pipeline import Pipeline, Relay
from gateway.ports import Delivery, OutboxRow
from gateway.service import Service
from tests.fakes import MemoryStore
from tests.helpers import raw


class Settler:
    def __init__(self) -> None:
        self.settled = 0

    async def settle(self, deliveries: Sequence[Delivery], results: Sequence[Result]) -> None:
        self.settled += len(deliveries)

    async def fail(self, deliveries: Sequence[Delivery]) -> None:
        return None


class Item:
    def __init__(self, settler: Settler) -> None:
        self.raw: RawMessage = raw(b"<x/>")
        self.settler = settler


class Sink:
    name = "slow"

    async def send(self, rows: Sequence[OutboxRow]) -> None:
        return None


def test_a_lagging_sink_throttles_the_intake_until_it_catches_up() -> None:
    async def scenario() -> tuple[int, int, bool, int]:
        store, settler = MemoryStore(outbox_len=100), Settler()
        relay = Relay(store, Sink(), max_backlog=10)  # type: ignore[arg-type]
        intake: asyncio.Queue[Delivery] = asyncio.Queue()
        service = Service(Pipeline(store), intake, [], [relay])  # type: ignore[arg-type]
        relay.run = lambda *a, **k: asyncio.sleep(3600)  # type: ignore[method-assign]
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        for _ in range(5):
            intake.put_nowait(Item(settler))  # type: ignore[arg-type]
        await asyncio.sleep(0.5)
        held_back, throttled = store.commits, service.throttled
        relay.position = 95  # the sink catches up to within its bound
        await asyncio.sleep(0.5)
        stop.set()
        await task
        return held_back, store.commits, throttled, settler.settled

    held_back, commits, throttled, settled = asyncio.run(scenario())
    assert held_back == 0
    assert throttled
    assert commits >= 1
    assert settled == 5


def test_a_stop_while_throttled_decides_what_was_delivered_without_waiting_for_the_sink() -> None:
    """Found by bench/soak.py --mqtt-down: with the MQTT broker gone and the intake throttled,
    SIGTERM never ended the gateway (a service manager kills it after its timeout)."""

    async def scenario() -> tuple[int, int, bool]:
        store, settler = MemoryStore(outbox_len=100), Settler()
        relay = Relay(store, Sink(), max_backlog=10)  # type: ignore[arg-type]
        intake: asyncio.Queue[Delivery] = asyncio.Queue()
        service = Service(Pipeline(store), intake, [], [relay])  # type: ignore[arg-type]
        relay.run = lambda *a, **k: asyncio.sleep(3600)  # type: ignore[method-assign]
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        for _ in range(5):
            intake.put_nowait(Item(settler))  # type: ignore[arg-type]
        await asyncio.sleep(0.5)
        throttled = service.throttled
        stop.set()
        await asyncio.sleep(1.0)  # the sink is as far behind as it was
        settled_while_behind = settler.settled
        relay.position = 100  # so that the stop need not wait its 10 s for the sink
        await asyncio.wait_for(task, 10)
        return settled_while_behind, store.commits, throttled

    settled, commits, throttled = asyncio.run(scenario())
    assert throttled
    assert settled == 5, "decided and acknowledged at the stop, the sink still behind"
    assert commits >= 1
