"""The store is locked by another writer: nothing is acknowledged, the gateway reports not ready,
and it resumes by itself once the lock is gone. Real SQLite; the source is an in-memory fake
that redelivers what it is told failed, as a broker does."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from adapters.sqlite import Store
from gateway.decide import Result
from gateway.pipeline import Pipeline
from gateway.ports import Delivery
from gateway.service import Service
from tests import helpers as h


class RedeliveringSource:
    name = "fake-mailbox"
    connected = True
    last_message_at: float | None = None

    def __init__(self, intake: asyncio.Queue[Delivery]) -> None:
        self.intake = intake
        self.acked: list[str] = []
        self.failed = 0

    async def settle(self, deliveries: Sequence[Delivery], results: Sequence[Result]) -> None:
        self.acked += [r.key for r in results]

    async def fail(self, deliveries: Sequence[Delivery]) -> None:
        self.failed += len(deliveries)
        for delivery in deliveries:
            self.intake.put_nowait(delivery)

    async def start(self, stop: asyncio.Event) -> bool:
        return True

    async def stop_consuming(self) -> None:
        return None

    async def close(self) -> None:
        return None


class Item:
    def __init__(self, body: bytes, settler: RedeliveringSource) -> None:
        self.raw = h.raw(body)
        self.settler = settler


def test_a_locked_store_holds_every_ack_back_until_it_can_write(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    bodies = [h.v30_inline(h.v30_xml(cpr=cpr)) for cpr in ("1401851234", "0101001234")]

    async def scenario() -> tuple[int, bool, int, list[str], int]:
        store = await Store.open(path)
        await store._conn.execute("PRAGMA busy_timeout=200")  # fail fast while locked
        intake: asyncio.Queue[Delivery] = asyncio.Queue()
        source = RedeliveringSource(intake)
        service = Service(Pipeline(store), intake, [source], [])
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        for body in bodies:
            intake.put_nowait(Item(body, source))  # type: ignore[arg-type]
        await asyncio.sleep(1.5)
        acked_while_locked, ready_while_locked = len(source.acked), service.ready
        failed_while_locked = source.failed
        locker.execute("ROLLBACK")
        locker.close()
        for _ in range(100):
            if len(source.acked) >= len(bodies):
                break
            await asyncio.sleep(0.1)
        stop.set()
        await task
        stored = await store._conn.execute_fetchall("SELECT COUNT(*) FROM messages")
        await store.close()
        return (acked_while_locked, ready_while_locked, failed_while_locked, source.acked,
                next(iter(stored))[0])

    acked_while_locked, ready_while_locked, failed, acked, stored = asyncio.run(scenario())
    assert acked_while_locked == 0
    assert not ready_while_locked
    assert failed >= len(bodies)  # handed back to the source, to come again
    assert len(set(acked)) == len(bodies)
    assert stored == len(bodies)
