"""A relay must never read what a batch has written but not committed.

All tasks share one SQLite connection. Before statements were serialised, the outbox relay
could read inside a batch's open transaction, send those rows and move its position past
them; when the commit then failed (disk full) and the batch came again, its events took the
same sequence numbers and the relay skipped them: acknowledged, stored, never emitted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

import adapters.sqlite_batch
from adapters.sqlite import Store, StoreError
from gateway.correlate import CorrelationState
from gateway.decide import Prepared, Result, batch_keys, decide_batch, prepare
from gateway.envelope import EnvelopeReader
from gateway.ports import OutboxRow
from tests import helpers as h

WRITE = adapters.sqlite_batch.write


def write_then_fail(db: sqlite3.Connection, *args: Any) -> list[OutboxRow]:
    """Writes the whole batch, lets other tasks run, then fails as a full disk would."""
    WRITE(db, *args)
    time.sleep(0.2)  # the relay polls meanwhile
    raise sqlite3.OperationalError("database or disk is full")


def test_the_outbox_shows_no_row_of_a_batch_that_is_not_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapters.sqlite_batch, "write", write_then_fail)

    async def scenario() -> tuple[list[object], list[object]]:
        store = await Store.open(tmp_path / "g.db")
        batch = [prepare(h.raw(h.v30_inline(h.v30_xml())), EnvelopeReader())]
        state = await store.load_state(batch_keys(batch))
        results, effects = decide_batch(batch, state, 120)
        assert effects.output, "the batch emits an event"

        async def relay_reads_meanwhile() -> list[object]:
            await asyncio.sleep(0.05)  # inside the open transaction
            return list(await store.outbox_after(0, 100))

        reading = asyncio.create_task(relay_reads_meanwhile())
        with pytest.raises(StoreError):
            await store.commit(batch, results, effects)
        seen_during = await reading
        seen_after = list(await store.outbox_after(0, 100))
        await store.close()
        return seen_during, seen_after

    seen_during, seen_after = asyncio.run(scenario())
    assert seen_during == []
    assert seen_after == []


def test_a_failed_purge_leaves_no_transaction_open(tmp_path: Path) -> None:
    def decided(cpr: str) -> tuple[list[Prepared], list[Result], object]:
        batch = [prepare(h.raw(h.v30_inline(h.v30_xml(cpr=cpr))), EnvelopeReader())]
        results, effects = decide_batch(batch, CorrelationState(), 120)
        return batch, results, effects

    async def scenario() -> int:
        store = await Store.open(tmp_path / "g.db")
        await store.commit(*decided("1401851234"))  # type: ignore[arg-type]
        await store._statement("CREATE TRIGGER refuse BEFORE DELETE ON events "
                               "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END")
        with pytest.raises(aiosqlite.Error):  # fails in the middle of its transaction
            await store.purge(1, 1, now=dt.datetime(2100, 1, 1, tzinfo=dt.UTC))
        await store._statement("DROP TRIGGER refuse")
        await store.commit(*decided("0101001234"))  # type: ignore[arg-type]  # BEGIN works
        rows = await store.outbox_after(0, 100)
        await store.close()
        return len(rows)

    assert asyncio.run(scenario()) == 2
