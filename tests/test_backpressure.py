"""Backpressure, not loss: a sink too far behind holds the intake back until it catches up."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.correlate import CorrelationState, Effects
from gateway.decide import BatchKeys, Prepared, Result
from gateway.model import RawMessage
from gateway.pipeline import Pipeline, Relay
from gateway.ports import Delivery, OutboxRow
from gateway.service import Service
from tests.helpers import raw


class Store:
    """An in-memory store port whose outbox is 100 events long."""

    def __init__(self) -> None:
        self.commits = 0

    async def load_state(self, keys: BatchKeys) -> CorrelationState:
        return CorrelationState()

    async def commit(
        self, batch: Sequence[Prepared], results: Sequence[Result], effects: Effects
    ) -> None:
        self.commits += 1

    async def sink_progress(self, sink: str) -> int | None:
        return 0

    async def register_sink(self, sink: str, start: int = 0) -> None:
        return None

    async def outbox_after(self, seq: int, limit: int) -> list[OutboxRow]:
        return []

    async def mark_sent(self, sink: str, seq: int) -> None:
        return None

    async def outbox_end(self) -> int:
        return 100

    async def close_pairs(self, now: int, window_s: int) -> dict[str, int]:
        return {}


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
        store, settler = Store(), Settler()
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
