"""A batch's reads and writes, each run on the store's thread in one trip: the state its
decisions need (`load_state`), and its outcome in one transaction (`in_transaction`, `write`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import msgspec

from adapters.sqlite_schema import EVENT_COLUMNS, HIGHEST_OUTBOX_SEQ, SELECT_EVENTS
from gateway import canonical
from gateway.correlate import CorrelationState, Effects, EventRecord, Link
from gateway.decide import BatchKeys, Prepared, Result
from gateway.model import Outcome
from gateway.ports import OutboxRow

T = TypeVar("T")

# Batch commits are fsynced (WAL + FULL): an acknowledged message survives a power loss too,
# with one fsync per batch, never one per message. Only a sink's progress mark is not.
SYNC_COMMITS: Final = "FULL"
LINK_TOUCH_AFTER_S: Final = 86400  # a link's last use is written when a day old or more
_QUARANTINED: Final = Outcome.QUARANTINED  # read once, not per message


class QuarantineRow(msgspec.Struct, frozen=True, gc=False):
    seq: int  # the quarantine id; named like the outbox's so one relay serves both
    message_key: str
    version: str | None
    reason: str
    detail: str | None
    source: str
    received_at: int
    body: bytes


def placeholders(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


def load_state(
    db: sqlite3.Connection, keys: BatchKeys, retried: frozenset[str] = frozenset()
) -> CorrelationState:
    """`retried`: keys of quarantined messages being decided again, which count as unseen."""
    state = CorrelationState()
    state.messages = _known_messages(db, keys.message_keys) - retried
    legacy_ids, numbers = set(keys.legacy_case_ids), set(keys.case_numbers)
    for link in _links(db, legacy_ids, numbers):
        state.add_link(link)
        legacy_ids.add(link.legacy_case_id)
        numbers.add(link.case_number)
    for record in _events(db, keys, legacy_ids, numbers):
        state.add_event(record)
    # Fuzzy matching asks whether a candidate's ids are linked: load those links too.
    extra_legacy = {r.legacy_case_id for r in state.events.values()} - legacy_ids
    extra_numbers = {r.case_number for r in state.events.values()} - numbers
    extra_legacy.discard(None)
    extra_numbers.discard(None)
    for link in _links(db, extra_legacy, extra_numbers):  # type: ignore[arg-type]
        state.add_link(link)
    return state


def _known_messages(db: sqlite3.Connection, message_keys: set[str]) -> set[str]:
    found: set[str] = set()
    keys = list(message_keys)
    for start in range(0, len(keys), 5000):
        chunk = keys[start : start + 5000]
        rows = db.execute(
            f"SELECT message_key FROM messages WHERE message_key IN ({placeholders(chunk)})",
            chunk,
        )
        found.update(row[0] for row in rows)
    return found


def _links(db: sqlite3.Connection, legacy_ids: set[str], numbers: set[str]) -> list[Link]:
    if not legacy_ids and not numbers:
        return []
    legacy, number = list(legacy_ids), list(numbers)
    # UNION, not OR: with OR SQLite may scan the whole table instead of both indexes
    rows = db.execute(
        "SELECT legacy_case_id, case_number, cpr, method FROM links "
        f"WHERE legacy_case_id IN ({placeholders(legacy)}) UNION "
        "SELECT legacy_case_id, case_number, cpr, method FROM links "
        f"WHERE case_number IN ({placeholders(number)})",
        [*legacy, *number],
    )
    return [Link(*row) for row in rows]


def _events(
    db: sqlite3.Connection, keys: BatchKeys, legacy_ids: set[str], numbers: set[str]
) -> list[EventRecord]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, values in (
        ("legacy_case_id", legacy_ids),
        ("case_number", numbers),
        ("event_ref", keys.event_refs),
        ("cpr", keys.cprs),
    ):
        if values:
            where = f"{column} IN ({placeholders(list(values))})"
            clauses.append(f"{SELECT_EVENTS} WHERE {where}")
            params.extend(values)
    if not clauses:
        return []
    return [EventRecord(*row) for row in db.execute(" UNION ".join(clauses), params)]


def mark_sent(db: sqlite3.Connection, sink: str, seq: int) -> None:
    db.execute("PRAGMA synchronous=NORMAL")  # WAL: this commit is not synced...
    try:
        db.execute("UPDATE sink_progress SET last_seq = ? WHERE sink = ? AND last_seq < ?",
                   (seq, sink, seq))
    finally:
        db.execute(f"PRAGMA synchronous={SYNC_COMMITS}")  # ...every batch commit is


def in_transaction(db: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """BEGIN IMMEDIATE ... COMMIT; rolled back on any failure, the commit's own included, so
    that the connection is never left inside a transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work(db)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return result


def write(
    db: sqlite3.Connection, batch: Sequence[Prepared], results: Sequence[Result],
    effects: Effects, now: int, retried: Sequence[QuarantineRow] = (),
) -> list[OutboxRow]:
    """Writes the batch; returns its outbox rows as stored, for the relays. A quarantined
    message decided again (`retried`) leaves the quarantine in this same transaction."""
    if retried:
        db.executemany("DELETE FROM messages WHERE message_key = ? AND outcome = 'quarantined'",
                       [(row.message_key,) for row in retried])
        db.executemany("DELETE FROM quarantine WHERE id = ?", [(row.seq,) for row in retried])
    _write_outcomes(db, batch, results)
    _write_events(db, effects, now)
    return _write_outbox(db, effects, now) if effects.output else []


def _write_outcomes(
    db: sqlite3.Connection, batch: Sequence[Prepared], results: Sequence[Result]
) -> None:
    """Every message's outcome, and the quarantined ones' bodies and reasons."""
    db.executemany(
        "INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?)",
        [
            # an Outcome is a str: bound as its value without the enum's `.value` lookup
            (r.key, r.outcome, r.event_id, r.version, int(p.raw.received_at.timestamp()))
            for p, r in zip(batch, results, strict=True)
        ],
    )
    db.executemany(
        "INSERT INTO quarantine (message_key, version, reason, detail, source, received_at,"
        " body) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (r.key, r.version, r.reason, r.detail, p.raw.source,
             int(p.raw.received_at.timestamp()), p.raw.body)
            for p, r in zip(batch, results, strict=True)
            if r.outcome is _QUARANTINED
        ],
    )


def _write_events(db: sqlite3.Connection, effects: Effects, now: int) -> None:
    """New and updated events, new links, and the links the batch used."""
    db.executemany(
        f"INSERT INTO events ({', '.join(EVENT_COLUMNS[:-1])}, accepted_at) "
        f"VALUES ({placeholders(EVENT_COLUMNS)})",
        [(*msgspec.structs.astuple(r)[:-1], now) for r in effects.new_events.values()],
    )
    db.executemany(
        "UPDATE events SET versions = ?, other_seen = ?, legacy_case_id = ?, case_number = ?,"
        " event_ref = ? WHERE event_id = ?",
        [
            (r.versions, r.other_seen, r.legacy_case_id, r.case_number, r.event_ref, r.event_id)
            for r in effects.updated_events.values()
        ],
    )
    db.executemany(
        "INSERT OR IGNORE INTO links VALUES (?, ?, ?, ?, ?)",
        [(*msgspec.structs.astuple(link), now) for link in effects.new_links],
    )
    # A link's retention counts from its last use: a case still active years on keeps the
    # link that gives its events both case ids. Written at most once a day per link.
    db.executemany(
        "UPDATE links SET learned_at = ? WHERE legacy_case_id = ? AND learned_at < ?",
        [(now, legacy, now - LINK_TOUCH_AFTER_S) for legacy in effects.used_links],
    )


def _write_outbox(db: sqlite3.Connection, effects: Effects, now: int) -> list[OutboxRow]:
    """The canonical events, encoded once, in acceptance order."""
    # Sequence numbers given explicitly, after the highest ever used (AUTOINCREMENT keeps it
    # in sqlite_sequence, purged rows included), so that the rows are known as stored.
    first = int(db.execute(HIGHEST_OUTBOX_SEQ).fetchone()[0]) + 1
    rows = [
        OutboxRow(seq, e.event_id, e.person.municipality_code, e.category, e.event_type,
                  canonical.encode(e))
        for seq, e in enumerate(effects.output, start=first)
    ]
    db.executemany(
        "INSERT INTO outbox (seq, event_id, municipality_code, category, event_type, body,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(*msgspec.structs.astuple(row), now) for row in rows],
    )
    return rows
