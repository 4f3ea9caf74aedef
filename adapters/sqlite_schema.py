"""The store's tables, and the statements that read or purge them whole (reports, the
retention purge). The Store (adapters/sqlite.py) runs them; a batch's own statements are in
sqlite_batch.py."""

from __future__ import annotations

import sqlite3
from typing import Final

from gateway.correlate import EventRecord

SCHEMA_VERSION: Final = 3

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    occurred_alt INTEGER,
    legacy_case_id TEXT,
    case_number TEXT,
    cpr TEXT NOT NULL,
    versions INTEGER NOT NULL,
    first_version TEXT NOT NULL,
    event_ref TEXT,
    first_seen INTEGER NOT NULL,
    other_seen INTEGER,
    municipality_code TEXT,
    accepted_at INTEGER NOT NULL,
    pair_closed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_legacy ON events (legacy_case_id)
    WHERE legacy_case_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_number ON events (case_number) WHERE case_number IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_ref ON events (event_ref) WHERE event_ref IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_cpr ON events (cpr);
CREATE INDEX IF NOT EXISTS events_accepted ON events (accepted_at);
CREATE INDEX IF NOT EXISTS events_open_pairs ON events (first_seen) WHERE pair_closed = 0;
-- the overlap counts read an index, not millions of rows sorted in memory
CREATE INDEX IF NOT EXISTS events_versions ON events (versions);
CREATE TABLE IF NOT EXISTS messages (
    message_key TEXT PRIMARY KEY,
    outcome TEXT NOT NULL,
    event_id TEXT,
    version TEXT,
    received_at INTEGER NOT NULL
) WITHOUT ROWID;
-- the retention purge finds old rows by index, not by reading millions of them under the lock
CREATE INDEX IF NOT EXISTS messages_received ON messages (received_at);
CREATE TABLE IF NOT EXISTS links (
    legacy_case_id TEXT PRIMARY KEY,
    case_number TEXT NOT NULL UNIQUE,
    cpr TEXT NOT NULL,
    method TEXT NOT NULL,
    learned_at INTEGER NOT NULL  -- learned, or last used by an event (to the day)
);
CREATE INDEX IF NOT EXISTS links_learned ON links (learned_at);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    municipality_code TEXT,
    category TEXT NOT NULL,
    event_type TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
-- feed: what last_seq counts: `outbox` (a configured sink), `replay` (a replay's output file,
-- `replay-done` once that replay finished) or `quarantine` (a quarantine id, not an outbox seq)
CREATE TABLE IF NOT EXISTS sink_progress (
    sink TEXT PRIMARY KEY, last_seq INTEGER NOT NULL, feed TEXT NOT NULL DEFAULT 'outbox'
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    message_key TEXT NOT NULL,
    version TEXT,
    reason TEXT NOT NULL,
    detail TEXT,
    source TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_received ON quarantine (received_at);
"""

EVENT_COLUMNS: Final = tuple(EventRecord.__struct_fields__)
# The outbox rows every sink still feeding has taken: the configured sinks and unfinished
# replays. A finished replay's output, or a quarantine relay (whose position is a quarantine
# id), would hold every later row for ever; in a store only ever replayed into, the finished
# replays' outputs are all there is.
PURGE_UP_TO: Final = (
    "SELECT COALESCE("
    "(SELECT MIN(last_seq) FROM sink_progress WHERE feed IN ('outbox', 'replay')),"
    " (SELECT MIN(last_seq) FROM sink_progress WHERE feed = 'replay-done'), 0)"
)
# The Danish month (Europe/Copenhagen) of a UTC time in epoch seconds, in SQL: SQLite knows no
# time zones, and a Python function called for each of 5 million rows doubles the report's
# time. A month begins at local midnight, UTC+2 from April to October and UTC+1 from November
# to March: the EU's summer time always begins before April and ends before November. So a
# time 2 h on falling in April-October is in that month; otherwise 1 h on gives the month.
# tests/test_metrics.py checks it against zoneinfo at every month's turn from 2000 to 2040.
DANISH_MONTH_SQL: Final = (
    "CASE WHEN CAST(strftime('%m', {t} + 7200, 'unixepoch') AS INTEGER) BETWEEN 4 AND 10"
    " THEN strftime('%Y-%m', {t} + 7200, 'unixepoch')"
    " ELSE strftime('%Y-%m', {t} + 3600, 'unixepoch') END"
)
_REPORT_CELL: Final = (DANISH_MONTH_SQL.format(t="first_seen") + " AS month,"
                       " COALESCE(municipality_code, 'unknown') AS kommune")
REPORT_COUNTS: Final = (
    f"SELECT {_REPORT_CELL}, SUM(first_version = '2.2'), SUM(first_version <> '2.2'),"
    " SUM(versions = 3), SUM(versions = 1), SUM(versions NOT IN (1, 3)),"
    " SUM(versions = 3 AND other_seen IS NOT NULL) FROM events GROUP BY month, kommune"
)
REPORT_LAGS: Final = (
    f"SELECT {_REPORT_CELL}, other_seen - first_seen AS lag FROM events"
    " WHERE versions = 3 AND other_seen IS NOT NULL ORDER BY month, kommune, lag"
)
SELECT_EVENTS: Final = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events"
SELECT_QUARANTINE: Final = (
    "SELECT id, message_key, version, reason, detail, source, received_at, body FROM quarantine"
)
# The highest outbox sequence number ever given (AUTOINCREMENT keeps it, purged rows included)
HIGHEST_OUTBOX_SEQ: Final = (
    "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0)"
)


def purge_older(db: sqlite3.Connection, cutoff: int, quarantine_cutoff: int) -> dict[str, int]:
    """Deletes what was accepted, received or last used before `cutoff` (the quarantine:
    before `quarantine_cutoff`), and every outbox row that every sink still feeding has taken
    (PURGE_UP_TO); how many rows of each table."""
    # A refused message's id goes with its body: a redelivery is then decided anew, not
    # suppressed as a duplicate of a message no longer kept anywhere. Found by way of the
    # (small) quarantine: a scan of every message id older than the quarantine period would
    # hold the write lock for seconds in a year-old store.
    forgotten = db.execute(
        "DELETE FROM messages WHERE outcome = 'quarantined' AND message_key IN"
        " (SELECT message_key FROM quarantine WHERE received_at < ?)",
        (quarantine_cutoff,)).rowcount
    deleted: dict[str, int] = {}
    for table, column, before in (
        ("events", "accepted_at", cutoff),
        ("messages", "received_at", cutoff),
        ("quarantine", "received_at", quarantine_cutoff),
        ("links", "learned_at", cutoff),
    ):
        deleted[table] = db.execute(f"DELETE FROM {table} WHERE {column} < ?",
                                    (before,)).rowcount
    deleted["messages"] += forgotten
    deleted["outbox"] = db.execute(f"DELETE FROM outbox WHERE seq <= ({PURGE_UP_TO})").rowcount
    return deleted
