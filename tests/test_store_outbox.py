"""The store hands the relays the rows it has just committed instead of reading them back.

What a relay gets must be exactly what the table holds: the same rows, the same sequence
numbers, none reused after a purge, and a relay behind the rows in hand reads the table.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import adapters.sqlite
from adapters.sqlite import Store
from gateway.decide import batch_keys, decide_batch, prepare
from gateway.envelope import EnvelopeReader
from gateway.ports import OutboxRow
from tests import helpers as h
from tests.conftest import ROOT
from tests.mosquitto import free_port


async def commit_new_events(store: Store, count: int) -> None:
    """One batch of `count` messages, each a new event (its own case and HaendelseId)."""
    batch = [
        prepare(h.raw(h.v30_inline(h.v30_xml(
            number=f"AES-2022-{uuid.uuid4().int % 10**7:07d}", legacy=None,
            ref=str(uuid.uuid4())))), EnvelopeReader())
        for _ in range(count)
    ]
    state = await store.load_state(batch_keys(batch))
    results, effects = decide_batch(batch, state, 120)
    assert len(effects.output) == count
    await store.commit(batch, results, effects)


async def from_table(path: Path, after: int) -> list[OutboxRow]:
    async with await Store.open(path) as fresh:  # nothing in hand: reads the table
        return await fresh.outbox_after(after, 10_000)


def test_rows_in_hand_equal_the_table_and_continue_after_a_purge(tmp_path: Path) -> None:
    path = tmp_path / "g.db"

    async def scenario() -> None:
        async with await Store.open(path) as store:
            await store.register_sink("s", 0)
            await commit_new_events(store, 5)
            await commit_new_events(store, 3)
            handed = await store.outbox_after(0, 10_000)
            assert [row.seq for row in handed] == list(range(1, 9))
            assert handed == await from_table(path, 0)
            assert await store.outbox_after(2, 3) == handed[2:5]
            assert await store.outbox_after(8, 10) == []

            await store.mark_sent("s", 8)
            assert (await store.purge(retention_days=400))["outbox"] == 8
            await commit_new_events(store, 2)  # after the highest number ever used, not 1
            handed = await store.outbox_after(8, 10)
            assert [row.seq for row in handed] == [9, 10]
            assert handed == await from_table(path, 8)

    asyncio.run(scenario())


def test_a_relay_behind_the_rows_in_hand_reads_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "g.db"
    monkeypatch.setattr(adapters.sqlite, "RECENT_OUTBOX_ROWS", 2)

    async def scenario() -> None:
        async with await Store.open(path) as store:
            await commit_new_events(store, 5)
            assert [row.seq for row in store._recent] == [4, 5]
            behind = await store.outbox_after(0, 10)
            assert [row.seq for row in behind] == [1, 2, 3, 4, 5]
            assert behind == await from_table(path, 0)

    asyncio.run(scenario())


def test_the_rows_in_hand_are_bounded_in_bytes_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event's texts can be 64 KiB each: 8 192 such rows were 0.5-1 GB in memory. A replay
    of 10 000 events with a 59 KB text each peaked at 1 212 MB, 928 MB with 100 rows kept."""
    path = tmp_path / "g.db"

    async def scenario() -> tuple[list[int], int, int, list[OutboxRow]]:
        async with await Store.open(path) as store:
            await commit_new_events(store, 1)
            limit = int(3.5 * len(store._recent[0].body))  # the rows are alike in size
            monkeypatch.setattr(adapters.sqlite, "RECENT_OUTBOX_BYTES", limit, raising=False)
            await commit_new_events(store, 4)
            await commit_new_events(store, 2)
            kept = [row.seq for row in store._recent]
            held = sum(len(row.body) for row in store._recent)
            return kept, held, limit, await store.outbox_after(0, 10)

    kept, held, limit, rows = asyncio.run(scenario())
    assert kept == [5, 6, 7]  # the newest that fit
    assert held <= limit
    assert [row.seq for row in rows] == list(range(1, 8))
    assert rows == asyncio.run(from_table(path, 0))


def test_the_outbox_end_from_memory_is_the_table_s(tmp_path: Path) -> None:
    path = tmp_path / "g.db"

    async def scenario() -> None:
        async with await Store.open(path) as store:
            assert await store.outbox_end() == 0
            await commit_new_events(store, 4)
            await commit_new_events(store, 3)
            assert await store.outbox_end() == 7
        async with await Store.open(path) as reopened:  # nothing in hand: asks the table
            assert await reopened.outbox_end() == 7
            await commit_new_events(reopened, 2)
            assert await reopened.outbox_end() == 9

    asyncio.run(scenario())


async def counted(path: Path, sink: str) -> tuple[int, int | None]:
    """The backlog the slow way: every row past the sink's position, counted."""
    async with await Store.open(path) as fresh:
        rows = await fresh._query(
            "SELECT COUNT(*), MIN(o.created_at) FROM outbox o, sink_progress p"
            " WHERE p.sink = ? AND o.seq > p.last_seq", (sink,))
        return int(rows[0][0]), rows[0][1]


def test_the_backlog_is_what_a_count_of_the_waiting_rows_gives(tmp_path: Path) -> None:
    path = tmp_path / "g.db"

    async def scenario() -> list[tuple[int, bool]]:
        seen = []

        async def check(sink: str) -> None:
            count, age = await store.backlog(sink)
            expected, oldest = await counted(path, sink)
            assert count == expected
            assert (age is None) == (oldest is None)
            seen.append((count, age is None))

        async with await Store.open(path) as store:
            await store.register_sink("a", 0)
            await check("a")  # nothing yet
            await commit_new_events(store, 5)
            await store.register_sink("b", 0)
            await commit_new_events(store, 3)
            await store.mark_sent("a", 6)
            await check("a")
            await check("b")
            await store.mark_sent("b", 8)
            await store.mark_sent("a", 8)
            await store.purge(retention_days=400)  # every row relayed: the outbox is empty
            await check("a")
            await commit_new_events(store, 2)
            await check("b")
            assert await store.backlog("never-registered") == (0, None)
        return seen

    assert asyncio.run(scenario()) == [(0, True), (2, False), (8, False), (0, True), (2, False)]


def test_pairing_windows_close_in_chunks_each_event_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapters.sqlite, "CLOSE_CHUNK", 2)

    async def scenario() -> tuple[dict[str, int], dict[str, int], int]:
        async with await Store.open(tmp_path / "g.db") as store:
            await commit_new_events(store, 7)  # 3.0 only, every one
            closed = await store.close_pairs(2**62, 72 * 3600)
            again = await store.close_pairs(2**62, 72 * 3600)
            still_open = await store._query("SELECT COUNT(*) FROM events WHERE pair_closed = 0")
            return closed, again, int(still_open[0][0])

    closed, again, still_open = asyncio.run(scenario())
    assert closed == {"both": 0, "only_2_2": 0, "only_3_0": 7}
    assert again == {"both": 0, "only_2_2": 0, "only_3_0": 0}
    assert still_open == 0


KILLED_AFTER_MARK = """
import asyncio, os, signal, sys
from adapters.sqlite import Store

async def main() -> None:
    store = await Store.open(sys.argv[1])
    await store.register_sink("s", 0)
    await store.mark_sent("s", 7)
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint

asyncio.run(main())
"""


def test_a_sinks_mark_survives_a_killed_process(tmp_path: Path) -> None:
    """A mark is written without an fsync of its own, but it is written: a process killed
    right after it loses nothing (only a power loss could, and then the rows are repeated)."""
    path = tmp_path / "g.db"
    done = subprocess.run([sys.executable, "-c", KILLED_AFTER_MARK, str(path)], cwd=ROOT,
                          check=False, capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr

    async def progress() -> int | None:
        async with await Store.open(path) as store:
            return await store.sink_progress("s")

    assert asyncio.run(progress()) == 7


def test_marks_leave_batch_commits_fully_synchronous(tmp_path: Path) -> None:
    async def scenario() -> list[int]:
        async with await Store.open(tmp_path / "g.db") as store:
            await store.register_sink("s", 0)
            await commit_new_events(store, 3)
            await store.mark_sent("s", 3)
            return [row[0] for row in await store._query("PRAGMA synchronous")]

    assert asyncio.run(scenario()) == [2]  # FULL: every batch commit is fsynced


def test_only_configured_sinks_hold_the_outbox_back_from_the_purge(tmp_path: Path) -> None:
    """Until stop 16 every registration counted: a quarantine relay (whose position is a
    quarantine id, a few dozen) or a finished `quarantine replay`'s output kept every outbox
    row after its position for ever, so the store grew without end. An unfinished replay's
    output still counts: resumed, it needs its rows."""

    async def scenario() -> tuple[dict[str, int], int, list[int], int]:
        async with await Store.open(tmp_path / "g.db") as store:
            await commit_new_events(store, 10)
            await store.register_sink("amqp:aes.events@localhost/", 0)
            await store.register_sink("amqp:aes.events@localhost/:quarantine", 1, "quarantine")
            await store.register_sink("replay-output", 2, "replay-done")
            await store.register_sink("jsonl:/gone.jsonl", 4)
            await store.mark_sent("amqp:aes.events@localhost/", 7)
            forgotten = await store.forget_sinks(["amqp:aes.events@localhost/",
                                                  "amqp:aes.events@localhost/:quarantine"])
            deleted = await store.purge(400)
            left = [row.seq for row in await from_table(tmp_path / "g.db", 0)]
            await store.set_feed("replay-output", "replay")  # a replay resumed, unfinished
            await commit_new_events(store, 2)
            await store.mark_sent("amqp:aes.events@localhost/", 12)
            return forgotten, deleted["outbox"], left, (await store.purge(400))["outbox"]

    forgotten, deleted, left, then_deleted = asyncio.run(scenario())
    assert forgotten == {"jsonl:/gone.jsonl": 6}  # 10 events, 4 of them taken
    assert deleted == 7
    assert left == [8, 9, 10]
    assert then_deleted == 0  # the replay output is at 2: rows 8-12 wait for it


def test_a_schema_2_store_learns_which_progress_counts_what(tmp_path: Path) -> None:
    path = tmp_path / "g.db"

    async def open_and_close() -> None:
        async with await Store.open(path):
            pass

    asyncio.run(open_and_close())
    with sqlite3.connect(path) as db:  # sink_progress as schema 2 left it
        db.executescript("DROP TABLE sink_progress; CREATE TABLE sink_progress "
                         "(sink TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);"
                         "INSERT INTO sink_progress VALUES ('mqtt:aes@h:1883', 5),"
                         " ('amqp:x@h/:quarantine', 2), ('replay-output', 1);")
    asyncio.run(open_and_close())
    with sqlite3.connect(path) as db:
        feeds = dict(db.execute("SELECT sink, feed FROM sink_progress"))
    assert feeds == {"mqtt:aes@h:1883": "outbox", "amqp:x@h/:quarantine": "quarantine",
                     "replay-output": "replay-done"}


def test_the_gateway_forgets_a_sink_no_longer_configured(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from adapters.runtime import run
    from gateway import config as cfg
    from tests.helpers import push_to_jsonl

    caplog.set_level(logging.INFO, logger="aes_gateway.runtime")

    async def scenario() -> set[str]:
        async with await Store.open(tmp_path / "g.db") as store:
            await commit_new_events(store, 3)
            await store.register_sink("mqtt:aes@old-broker:1883", 1)
        config = cfg.parse(push_to_jsonl(tmp_path, 0) + '[http]\nlisten = "127.0.0.1:0"\n')
        await run(config, until_idle=0.3)
        async with await Store.open(tmp_path / "g.db") as store:
            return {name for name, in await store._query("SELECT sink FROM sink_progress")}

    assert asyncio.run(scenario()) == {f"jsonl:{(tmp_path / 'out.jsonl').resolve()}"}
    assert ("sink mqtt:aes@old-broker:1883 is no longer configured: its progress is dropped, "
            "and the 2 events it had not taken are no longer kept for it") in caplog.text
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 3  # the new sink: all
    (starting,) = [r for r in caplog.records if r.getMessage() == "gateway starting"]
    assert starting.store == str((tmp_path / "g.db").resolve())  # type: ignore[attr-defined]
    assert starting.sinks == [f"jsonl:{(tmp_path / 'out.jsonl').resolve()}"]  # type: ignore[attr-defined]


def test_each_sink_is_registered_once_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relays register before the observer's first purge, and the service does not start
    them a second time."""
    from adapters.runtime import run
    from gateway import config as cfg
    from tests.helpers import push_to_jsonl

    registered: list[str] = []
    register = Store.register_sink

    async def counted(self: Store, sink: str, start: int = 0, feed: str = "outbox") -> None:
        registered.append(sink)
        await register(self, sink, start, feed)

    monkeypatch.setattr(Store, "register_sink", counted)
    config = cfg.parse(push_to_jsonl(tmp_path, 0) + '[http]\nlisten = "127.0.0.1:0"\n')
    asyncio.run(run(config, until_idle=0.3))
    assert registered == [f"jsonl:{(tmp_path / 'out.jsonl').resolve()}"]


def test_a_failing_retention_purge_is_logged_as_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The purge deletes personal data past its retention: when it fails, the log says so
    at a level operators watch (it said so at DEBUG only)."""
    from adapters.runtime import run
    from gateway import config as cfg
    from tests.helpers import push_to_jsonl

    async def full(self: Store, *args: object, **kwargs: object) -> dict[str, int]:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Store, "purge", full)
    caplog.set_level(logging.INFO, logger="aes_gateway.runtime")
    port = free_port()
    config = cfg.parse(push_to_jsonl(tmp_path, 0) + f'[http]\nlisten = "127.0.0.1:{port}"\n')

    async def scenario() -> str:
        service = asyncio.create_task(run(config, until_idle=1.0))
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession() as session, \
                session.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
        await service
        return text

    assert "aes_gateway_retention_purge_failures_total 1.0" in asyncio.run(scenario())
    (failed,) = [r for r in caplog.records if r.getMessage().startswith("retention purge")]
    assert failed.levelname == "WARNING"
    assert failed.exc_info is not None
    assert "disk is full" in str(failed.exc_info[1])


@pytest.mark.parametrize(("fails", "tries"), [(True, range(3, 7)), (False, range(1, 2))],
                         ids=["failing", "working"])
def test_a_failed_purge_is_tried_again_after_the_retry_pause_not_at_every_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: bool, tries: range,
) -> None:
    """The README's "retried in 5 minutes", at a scale a test can wait for: passes every
    0.05 s, a retry pause of 0.3 s, a purge every hour. In 1.2 s a failing purge is tried 4-5
    times (not at each of 24 passes); a working one once."""
    from adapters import runtime
    from adapters.runtime import run
    from gateway import config as cfg
    from tests.helpers import push_to_jsonl

    attempts: list[float] = []
    purge = Store.purge

    async def counted(self: Store, *args: Any, **kwargs: Any) -> dict[str, int]:
        attempts.append(asyncio.get_running_loop().time())
        if fails:
            raise sqlite3.OperationalError("database or disk is full")
        return await purge(self, *args, **kwargs)

    monkeypatch.setattr(Store, "purge", counted)
    monkeypatch.setattr(runtime, "OBSERVE_EVERY_S", 0.05)
    monkeypatch.setattr(runtime, "PURGE_RETRY_S", 0.3)
    config = cfg.parse(push_to_jsonl(tmp_path, 0) + '[http]\nlisten = "127.0.0.1:0"\n')

    async def scenario() -> None:
        stop = asyncio.Event()
        service = asyncio.create_task(run(config, stop=stop))
        await asyncio.sleep(1.2)
        stop.set()
        await service

    asyncio.run(scenario())
    assert len(attempts) in tries, attempts
    assert all(b - a >= 0.29 for a, b in itertools.pairwise(attempts))


@pytest.mark.parametrize(("keep", "left"), [("", ["399"]), ("keep_days = 500", ["399", "401"]),
                                            ("keep_days = 0", ["399", "401"])])
def test_the_hourly_purge_deletes_rotated_jsonl_files_past_retention(
    tmp_path: Path, keep: str, left: list[str], caplog: pytest.LogCaptureFixture,
) -> None:
    """Until stop 22 every rotated file was kept for ever: the canonical events name people,
    and the store's retention (400 days) ended in the store."""
    import datetime as dt

    from adapters.jsonl import ROTATED_STAMP
    from adapters.runtime import run
    from gateway import config as cfg
    from tests.helpers import push_to_jsonl

    now = dt.datetime.now(dt.UTC)
    for days in ("399", "401"):
        at = now - dt.timedelta(days=int(days))
        (tmp_path / f"out.{at.strftime(ROTATED_STAMP)}.jsonl").write_text(f'"{days}"\n')
    config = cfg.parse(push_to_jsonl(tmp_path, 0) + keep + '\n[http]\nlisten = "127.0.0.1:0"\n')
    caplog.set_level(logging.INFO, logger="aes_gateway.runtime")
    asyncio.run(run(config, until_idle=0.3))
    kept = sorted(p.read_text().strip().strip('"') for p in tmp_path.glob("out.*.jsonl"))
    assert kept == left
    said = [r for r in caplog.records if r.getMessage().startswith("rotated files")]
    assert [(r.files, r.keep_days) for r in said] == (  # type: ignore[attr-defined]
        [(1, 400)] if left == ["399"] else [])
