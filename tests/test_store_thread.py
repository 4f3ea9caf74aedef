"""The store runs a batch's statements on aiosqlite's thread in one trip (`on_thread`), through
aiosqlite's internal queue: aiosqlite has no public call for it. If an upgrade changes those
internals, this fails."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from adapters.sqlite import Store, on_thread


def test_a_job_runs_on_the_connection_s_own_thread_with_its_connection(tmp_path: Path) -> None:
    def job(db: sqlite3.Connection) -> tuple[int, int]:
        count = db.execute("SELECT COUNT(*) FROM meta WHERE key = 'schema_version'").fetchone()
        return threading.get_ident(), int(count[0])

    async def scenario() -> list[tuple[int, int]]:
        async with await Store.open(tmp_path / "g.db") as store:
            return [await on_thread(store._conn, job) for _ in range(3)]

    runs = asyncio.run(scenario())
    threads = {thread for thread, _ in runs}
    assert len(threads) == 1, "every job on one thread"
    assert threading.get_ident() not in threads, "not on the event loop's thread"
    assert [found for _, found in runs] == [1, 1, 1], "the store's own connection"
