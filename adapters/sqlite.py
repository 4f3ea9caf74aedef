"""The durable store: SQLite in WAL mode through aiosqlite.

One transaction per batch (group commit) holds every outcome of the batch: message ids, events,
links, the outbox of canonical events and the quarantine. Sources are acknowledged only after it
commits; sinks are fed from the outbox, each with its own progress. The tables and whole-table
statements are in sqlite_schema.py, a batch's own statements in sqlite_batch.py, and the
handling of its files (private, refused when foreign, claimed, migrated) in sqlite_files.py;
`aes-gateway backup` and `restore` are in sqlite_backup.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import os
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar, cast

import aiosqlite

from adapters import sqlite_batch as batch_sql
from adapters import sqlite_files as files
from adapters.sqlite_batch import SYNC_COMMITS, placeholders
from adapters.sqlite_batch import QuarantineRow as QuarantineRow  # the Store's, re-exported
from adapters.sqlite_files import StoreError as StoreError  # the Store's, re-exported
from adapters.sqlite_schema import (
    HIGHEST_OUTBOX_SEQ,
    REPORT_COUNTS,
    REPORT_LAGS,
    SCHEMA,
    SCHEMA_VERSION,
    SELECT_QUARANTINE,
    purge_older,
)
from gateway import report
from gateway.correlate import CorrelationState, Effects
from gateway.decide import BatchKeys, Prepared, Result
from gateway.model import RawMessage
from gateway.ports import OutboxRow

log = logging.getLogger("aes_gateway.store")
T = TypeVar("T")

BULK_CHECKPOINT_PAGES: Final = 16384  # of 4 KiB: 64 MiB of WAL between checkpoints
# The newest committed outbox rows, kept to hand to relays without reading them back (a relay
# that is behind them reads the table): this many at most, about 6 MB of typical events, and
# never more than RECENT_OUTBOX_BYTES of bodies (an event's texts can be 64 KiB each).
RECENT_OUTBOX_ROWS: Final = 8192
RECENT_OUTBOX_BYTES: Final = 16 * 1024 * 1024
# Raw messages read from the quarantine at a time, in bytes, for every row after the first: a
# page of 500 rows (256 for the quarantine exchange) of oversized messages, each kept up to
# 16 MiB, would otherwise be 4-8 GB in memory at once.
QUARANTINE_PAGE_BYTES: Final = 32 * 1024 * 1024
CLOSE_CHUNK: Final = 5000  # pairing windows closed per statement (15-25 ms of the store)


async def on_thread(conn: aiosqlite.Connection, job: Callable[[sqlite3.Connection], T]) -> T:
    """Runs `job` with the sqlite3 connection on aiosqlite's thread, where each of its calls
    runs. aiosqlite has no public call for a function of one's own, so its internal queue is
    used here, and only here; the version is pinned, and tests/test_store_thread.py fails if
    the internals change."""
    run: Callable[..., Awaitable[object]] = conn._execute
    return cast(T, await run(lambda: job(conn._conn)))


class Store:
    """The SQLite store. Open with `await Store.open(path)`."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        # One connection serves every task: a query of another task (a relay reading the
        # outbox) must never run inside a batch's open transaction and see rows that a
        # rollback takes back. Every statement goes through the lock, transactions whole.
        self._lock = asyncio.Lock()
        self._recent: deque[OutboxRow] = deque()  # committed only
        self._recent_bytes = 0  # of their bodies
        self._retrying: dict[RawMessage, list[QuarantineRow]] = {}  # by the message retried
        self._retrying_keys: set[str] = set()  # their message keys
        self._claimed: int | None = None  # the lock file's descriptor, if this one decides
        self._identity = files.identity(path)  # the file opened: see _still_the_file

    async def _run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """`job` on the store's thread in one trip, under the lock. A batch's statements go
        together: one await each would wait each time for a turn of a busy event loop."""
        async with self._lock:
            return await on_thread(self._conn, job)

    async def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self._lock:
            return list(await self._conn.execute_fetchall(sql, params))

    async def _statement(self, sql: str, params: Sequence[Any] = ()) -> None:
        async with self._lock:
            await self._conn.execute(sql, params)

    async def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` in one transaction, in one trip to the store's thread, under the lock."""
        return await self._run(lambda db: batch_sql.in_transaction(db, work))

    @classmethod
    async def open(cls, path: Path | str, bulk: bool = False, claim: bool = False) -> Store:
        """`bulk` (replay): the WAL is checkpointed every 64 MiB instead of every 4 MiB, a
        tenth of the fsyncs; the live service keeps short checkpoints, short pauses.
        `claim`: this process will decide and relay; StoreError if another one does."""
        path = Path(path)
        claimed = conn = None
        try:
            files.refuse_foreign(path)
            files.create_private(path)
            claimed = files.claim(path) if claim else None
            conn = await aiosqlite.connect(path, isolation_level=None)
            await conn.executescript(
                f"PRAGMA journal_mode=WAL; PRAGMA synchronous={SYNC_COMMITS};"
                " PRAGMA busy_timeout=5000;"
                "PRAGMA cache_size=-32768; PRAGMA temp_store=MEMORY;"
                f"PRAGMA wal_autocheckpoint={BULK_CHECKPOINT_PAGES if bulk else 1000};"
                # What the retention purge deletes (CPR numbers, refused messages whole) is
                # zeroed in the file, not left in free pages for a backup to copy. Debian's
                # SQLite is built so; python.org's and others are not.
                "PRAGMA secure_delete=ON;"
            )
            await files.migrate(conn)
            await conn.executescript(SCHEMA)
            await conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        except BaseException as exc:
            # the connection's thread, left open, would keep the process from ever exiting
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            if claimed is not None:
                os.close(claimed)
            if isinstance(exc, OSError | aiosqlite.Error | sqlite3.Error):
                raise StoreError(f"cannot open store {str(path)!r}: {exc}") from exc
            raise
        store = cls(conn, path)
        store._claimed = claimed
        return store

    async def close(self) -> None:
        await self._conn.close()
        if self._claimed is not None:  # after the connection: its last writes are done
            os.close(self._claimed)
            self._claimed = None

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- deciding a batch -------------------------------------------------------------------

    def retry(self, rows: Mapping[RawMessage, Sequence[QuarantineRow]]) -> None:
        """These quarantined messages are about to be decided again (`quarantine replay`), as
        the messages they are keyed by: until then they count as unseen, and the commit that
        decides one also deletes it from the quarantine. Found again by message, not by key:
        a message refused for its size before its envelope was read has another key once it
        is read."""
        for raw, quarantined in rows.items():
            self._retrying.setdefault(raw, []).extend(quarantined)
            self._retrying_keys.update(row.message_key for row in quarantined)

    async def load_state(self, keys: BatchKeys) -> CorrelationState:
        """Everything the batch's decisions may depend on, and nothing else."""
        retried = frozenset(self._retrying_keys.intersection(keys.message_keys))
        try:
            return await self._run(lambda db: batch_sql.load_state(db, keys, retried))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the store: {exc}") from exc

    async def commit(
        self, batch: Sequence[Prepared], results: Sequence[Result], effects: Effects
    ) -> None:
        """Every outcome of the batch in one transaction."""
        now = int(dt.datetime.now(dt.UTC).timestamp())
        retrying = self._retrying
        raws = [p.raw for p in batch if p.raw in retrying] if retrying else []
        retried = [row for raw in raws for row in retrying[raw]]

        def work(db: sqlite3.Connection) -> list[OutboxRow]:
            rows = batch_sql.write(db, batch, results, effects, now, retried)
            self._still_the_file()  # before the COMMIT: else rolled back, nothing acknowledged
            return rows

        try:
            rows = await self._transaction(work)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot commit batch: {exc}") from exc
        for raw in raws:
            for row in retrying.pop(raw, ()):
                self._retrying_keys.discard(row.message_key)
        self._keep_recent(rows)

    def _keep_recent(self, rows: list[OutboxRow]) -> None:
        recent = self._recent
        if recent and rows and rows[0].seq != recent[-1].seq + 1:
            recent.clear()  # a gap (another writer?): keep only contiguous rows
            self._recent_bytes = 0
        recent.extend(rows)
        self._recent_bytes += sum(len(row.body) for row in rows)
        while recent and (len(recent) > RECENT_OUTBOX_ROWS
                          or self._recent_bytes > RECENT_OUTBOX_BYTES):
            self._recent_bytes -= len(recent.popleft().body)

    # --- relaying the outbox ----------------------------------------------------------------

    async def sink_progress(self, sink: str) -> int | None:
        rows = await self._query("SELECT last_seq FROM sink_progress WHERE sink = ?", (sink,))
        return int(rows[0][0]) if rows else None

    async def register_sink(self, sink: str, start: int = 0, feed: str = "outbox") -> None:
        """A new sink at `start`; a known one keeps its position and takes this feed."""
        await self._statement(
            "INSERT INTO sink_progress (sink, last_seq, feed) VALUES (?, ?, ?)"
            " ON CONFLICT (sink) DO UPDATE SET feed = excluded.feed",
            (sink, start, feed),
        )

    async def set_feed(self, sink: str, feed: str) -> None:
        await self._statement("UPDATE sink_progress SET feed = ? WHERE sink = ?", (feed, sink))

    async def forget_sinks(self, keep: Iterable[str]) -> dict[str, int]:
        """Drop the progress of every sink fed by the live service but not in `keep` (no longer
        configured), so that it no longer holds the outbox back from the purge. Returns each
        one's name and the events it had not taken."""
        kept = list(keep)

        def forget(db: sqlite3.Connection) -> dict[str, int]:
            gone = {name: int(pending) for name, pending in db.execute(
                f"SELECT sink, CASE feed WHEN 'outbox' THEN MAX(({HIGHEST_OUTBOX_SEQ})"
                " - last_seq, 0) ELSE 0 END FROM sink_progress"
                f" WHERE feed IN ('outbox', 'quarantine') AND sink NOT IN ({placeholders(kept)})",
                kept)}
            db.executemany("DELETE FROM sink_progress WHERE sink = ?", [(n,) for n in gone])
            return gone

        return await self._transaction(forget)

    async def outbox_after(self, seq: int, limit: int) -> list[OutboxRow]:
        recent = self._recent
        if recent and recent[0].seq <= seq + 1 <= recent[-1].seq:  # committed, still in hand
            start = seq + 1 - recent[0].seq
            return list(itertools.islice(recent, start, start + limit))
        rows = await self._query(
            "SELECT seq, event_id, municipality_code, category, event_type, body FROM outbox"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [OutboxRow(*row) for row in rows]

    async def mark_sent(self, sink: str, seq: int) -> None:
        """A sink's progress, written without an fsync of its own (one per relayed chunk, each
        holding the store lock that the next batch waits for). It becomes durable with the
        next batch commit, whose fsync covers every earlier WAL frame, or the next checkpoint.
        A killed process loses nothing (the frames are with the OS); a power loss before then
        takes the mark back, and the relay repeats those rows, as after a crash between send
        and mark."""
        await self._run(lambda db: batch_sql.mark_sent(db, sink, seq))

    async def outbox_end(self) -> int:
        """The newest outbox row's sequence number. Asked before every batch (is a sink too
        far behind?): from memory once this process has committed a row."""
        if self._recent:
            return self._recent[-1].seq
        rows = await self._query(HIGHEST_OUTBOX_SEQ)
        return int(rows[0][0])

    # --- metrics ----------------------------------------------------------------------------

    async def close_pairs(self, now: int, window_s: int) -> dict[str, int]:
        """Judge every event whose pairing window has passed by `now` (stream or wall time):
        `both` if the other version arrived within the window, else only its first version.

        In statements of CLOSE_CHUNK events, so that batches commit in between: replaying
        days-old traffic, a minute's worth of windows closes at once (64 599 in one statement
        held the store for 177 ms)."""
        outcomes = {"both": 0, "only_2_2": 0, "only_3_0": 0}
        while True:
            rows = await self._query(
                # strictly past the window: a twin stamped on its last second may be on its way
                "UPDATE events SET pair_closed = 1 WHERE seq IN (SELECT seq FROM events"
                " WHERE pair_closed = 0 AND first_seen < ? LIMIT ?) RETURNING first_version,"
                " other_seen IS NOT NULL AND other_seen - first_seen <= ?",
                (now - window_s, CLOSE_CHUNK, window_s),
            )
            for first_version, paired in rows:
                outcomes["both" if paired else f"only_{first_version.replace('.', '_')}"] += 1
            if len(rows) < CLOSE_CHUNK:
                return outcomes

    async def backlog(self, sink: str) -> tuple[int, float | None]:
        """(events not yet relayed to `sink`, age in seconds of the oldest of them).

        Read every few seconds for the metrics, under the store lock: two index lookups, not a
        count of the rows waiting (a scan of up to max_backlog rows, just when a sink is down).
        The numbers past a sink's position have no gaps: they are given in order, from the
        highest ever used, and purged only up to the lowest position of all sinks."""
        rows = await self._query(
            f"SELECT MAX(({HIGHEST_OUTBOX_SEQ}) - p.last_seq, 0),"
            " (SELECT created_at FROM outbox WHERE seq > p.last_seq ORDER BY seq LIMIT 1)"
            " FROM sink_progress p WHERE p.sink = ?", (sink,))
        count, oldest = rows[0] if rows else (0, None)
        age = None if oldest is None else max(dt.datetime.now(dt.UTC).timestamp() - oldest, 0)
        return int(count), age

    async def migration_report(self) -> list[dict[str, object]]:
        """The migration report (gateway/report.py), counted and sorted by SQLite on its
        thread; the sort spills to a temporary file rather than memory."""

        def build(db: sqlite3.Connection) -> list[dict[str, object]]:
            db.execute("PRAGMA temp_store=FILE")
            try:
                return report.build(db.execute(REPORT_COUNTS), db.execute(REPORT_LAGS))
            finally:
                db.execute("PRAGMA temp_store=MEMORY")

        return await self._run(build)

    def _still_the_file(self) -> None:
        """StoreError if the store's path no longer names the file this connection writes.
        Deleted (a cleanup, a wrong `rm`) or replaced, the file open here lives on unnamed,
        and what is committed to it is gone at the next start: until stop 19 the gateway
        went on acknowledging messages into it."""
        if files.identity(self.path) != self._identity:
            raise StoreError(
                f"the store file {str(self.path)!r} was deleted or replaced while in use: "
                "nothing more is acknowledged. Until the gateway stops, the file it was "
                f"writing can be copied from /proc/{os.getpid()}/fd (the link ending in "
                "'(deleted)'); stop the gateway, put the store back, and start it again")
        self._still_claimed()

    def _still_claimed(self) -> None:
        """The lock file deleted (taken for a stale one) or replaced: claimed again, or, if
        another process has claimed the store since, StoreError. Until stop 19 a second
        gateway could then decide into the same store, and emit twins under two ids."""
        if self._claimed is not None:
            self._claimed = files.claimed_still(self.path, self._claimed)

    async def check_files(self) -> None:
        """`_still_the_file`, between batches (the service's observer, when no batch comes)."""
        async with self._lock:
            self._still_the_file()

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())

    # --- operators --------------------------------------------------------------------------

    async def overlap(self) -> dict[str, int]:
        rows = await self._query(
            "SELECT versions, COUNT(*) FROM events GROUP BY versions"
        )
        by_bits = {int(bits): int(count) for bits, count in rows}
        return {"both": by_bits.get(3, 0), "only_2_2": by_bits.get(1, 0),
                "only_3_0": by_bits.get(2, 0)}

    async def quarantine_extent(self, only: int | None = None) -> tuple[int, int]:
        """(highest id, number of rows) of the quarantine, or of the one message `only`."""
        where = "" if only is None else f" WHERE id = {int(only)}"
        rows = await self._query(f"SELECT COALESCE(MAX(id), 0), COUNT(*) FROM quarantine{where}")
        return int(rows[0][0]), int(rows[0][1])

    async def quarantined_pages(
        self, only: int | None = None, with_body: bool = True, page: int = 500,
        upto: int | None = None,
    ) -> AsyncIterator[list[QuarantineRow]]:
        """The quarantine (or the one message `only`, or the rows up to id `upto`) in id order,
        a page at a time: it can hold millions of raw messages when a whole kind of input was
        refused. Without the body, `body` is empty."""
        after = 0
        while True:
            where, params = "id > ?", [after]
            for clause, value in (("id = ?", only), ("id <= ?", upto)):
                if value is not None:
                    where += f" AND {clause}"
                    params.append(value)
            rows = await self._quarantine_page(where, params, page, with_body)
            if not rows:
                return
            yield rows
            after = rows[-1].seq

    async def quarantine_after(self, seq: int, limit: int) -> list[QuarantineRow]:
        return await self._quarantine_page("id > ?", [seq], limit)

    async def _quarantine_page(
        self, where: str, params: list[Any], limit: int, with_body: bool = True,
    ) -> list[QuarantineRow]:
        """The first `limit` rows of the quarantine `where` holds, in id order, or fewer: with
        their bodies, no more than QUARANTINE_PAGE_BYTES after the first row's."""
        if not with_body:
            columns = SELECT_QUARANTINE.replace(", body FROM", ", X'' FROM")
            return [QuarantineRow(*row) for row in await self._query(
                f"{columns} WHERE {where} ORDER BY id LIMIT {int(limit)}", params)]
        # length() of a blob is read from its row's header, without the blob itself
        sizes = await self._query(
            f"SELECT id, length(body) FROM quarantine WHERE {where} ORDER BY id"
            f" LIMIT {int(limit)}", params)
        if not sizes:
            return []
        last, total = sizes[0][0], 0
        for seq, size in sizes[1:]:
            total += size
            if total > QUARANTINE_PAGE_BYTES:
                break
            last = seq
        return [QuarantineRow(*row) for row in await self._query(
            f"{SELECT_QUARANTINE} WHERE {where} AND id <= ? ORDER BY id LIMIT {int(limit)}",
            [*params, last])]

    async def purge(
        self, retention_days: int, quarantine_days: int | None = None,
        now: dt.datetime | None = None,
    ) -> dict[str, int]:
        """Delete what is older than the retention periods, and every outbox row that every
        sink still feeding has taken (see PURGE_UP_TO)."""
        now = now or dt.datetime.now(dt.UTC)

        def cutoff(days: int) -> int:
            return int((now - dt.timedelta(days=days)).timestamp())

        def delete(db: sqlite3.Connection) -> dict[str, int]:
            return purge_older(db, cutoff(retention_days),
                               cutoff(quarantine_days or retention_days))

        return await self._transaction(delete)
