"""A sink that hangs instead of failing (RabbitMQ blocking publishers during a memory or disk
alarm) counts as stalled after `stall_after_s`, and no longer once it takes the events.

Until stop 15 only a failed send marked a sink stalled: a hanging one left `/readyz` at 200
for as long as it hung.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.pipeline import Relay
from gateway.ports import OutboxRow
from tests.fakes import MemoryStore


class OutboxStore(MemoryStore):
    """An outbox of `length` events, and the progress a relay marks."""

    def __init__(self, length: int) -> None:
        super().__init__(outbox_len=length)
        self.marked = 0

    async def outbox_after(self, seq: int, limit: int) -> list[OutboxRow]:
        last = min(seq + limit, self.outbox_len)
        return [OutboxRow(n, f"event-{n}", "101", "case_change", "reported", b"{}")
                for n in range(seq + 1, last + 1)]

    async def mark_sent(self, sink: str, seq: int) -> None:
        self.marked = seq


class BlockedSink:
    """Takes events only while `open` is set, as a blocked broker connection does."""

    name = "blocked"

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.taken = 0

    async def send(self, rows: Sequence[OutboxRow]) -> None:
        await self.open.wait()
        self.taken += len(rows)


def test_a_hanging_sink_is_stalled_until_it_takes_the_events() -> None:
    async def scenario() -> list[tuple[bool, int]]:
        store, sink = OutboxStore(25), BlockedSink()
        relay = Relay(store, sink, batch_size=10, stall_after_s=0.2)  # type: ignore[arg-type]
        running = asyncio.create_task(relay.run())
        seen = []
        for wait in (0.1, 0.3):  # before and after stall_after_s
            await asyncio.sleep(wait)
            seen.append((relay.stalled, store.marked))
        sink.open.set()
        await asyncio.sleep(0.1)
        seen.append((relay.stalled, store.marked))
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        return seen

    assert asyncio.run(scenario()) == [(False, 0), (True, 0), (False, 25)]
