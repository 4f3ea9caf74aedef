"""The store's files: made private, refused when they are not a store, claimed by one process
at a time (`<store>.lock`), and brought up to this version's schema."""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import aiosqlite

from adapters.sqlite_schema import SCHEMA_VERSION

log = logging.getLogger("aes_gateway.store")


class StoreError(Exception):
    """The store cannot be opened or written; the original error is chained."""


SQLITE_HEADER: Final = b"SQLite format 3\x00"


def refuse_foreign(path: Path) -> None:
    """An existing file that is not an aes-gateway store is left as it is. Until stop 19 a
    mistyped `--store` naming some other file was made mode 0600 and given -wal and -shm
    files; another application's SQLite database also got the gateway's tables."""
    try:
        with path.open("rb") as existing:
            header = existing.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return
    if not header:  # empty: a store created and not yet written, or a fresh file to use
        return
    if header != SQLITE_HEADER:
        raise StoreError(f"{str(path)!r} is not an aes-gateway store (not a SQLite database);"
                         " it was left as it is")
    reader = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        tables = {row[0] for row in reader.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        reader.close()
    if tables and "meta" not in tables:  # every store has had `meta` since schema 1
        raise StoreError(f"{str(path)!r} is a SQLite database, but not an aes-gateway store "
                         f"(tables {', '.join(sorted(tables)[:5])}); it was left as it is")


def identity(path: Path) -> tuple[int, int] | None:
    """The file a path names, as (device, inode); None when it names none."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


COMPANIONS: Final = ("-wal", "-shm")  # the files SQLite keeps beside a store in WAL mode


def create_private(path: Path) -> None:
    """Create the store file (and its WAL companions) readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in (path, *(Path(f"{path}{suffix}") for suffix in COMPANIONS)):
        fd = os.open(name, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        os.chmod(name, 0o600)


def lock_path(path: Path) -> Path:
    """`<store>.lock`, beside the store."""
    return Path(f"{path}.lock")


def claim(path: Path) -> int:
    """The store's lock file (`<store>.lock`), held while this process decides and relays:
    a second gateway (or replay) on the same store would send every event again to the same
    sinks, and decide twins at the same moment as new events under two ids. Readers (report,
    purge, quarantine list) do not claim it. The kernel lets go of it when the process dies."""
    lock = lock_path(path)
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 20).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise StoreError(f"store {str(path)!r} is in use by another aes-gateway (pid {holder});"
                         " one process at a time may decide into a store") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def claimed_still(path: Path, held: int) -> int:
    """The lock file this process holds (`held`), or, if it was deleted (taken for a stale
    one) or replaced, the store claimed again: the new lock's descriptor. StoreError if
    another process has claimed the store since."""
    status = os.fstat(held)
    lock = lock_path(path)
    if identity(lock) == (status.st_dev, status.st_ino):
        return held
    try:
        claimed = claim(path)
    except StoreError as exc:
        raise StoreError(f"the store's lock file was deleted or replaced, and {exc}: "
                         "nothing more is acknowledged here; stop one of them") from None
    os.close(held)
    log.warning("the store's lock file %s was deleted or replaced; claimed again", lock)
    return claimed


SELECT_SCHEMA_VERSION: Final = "SELECT value FROM meta WHERE key = 'schema_version'"


def refuse_newer(what: str, found: Iterable[Sequence[str]]) -> None:
    """StoreError if the schema version `found` (SELECT_SCHEMA_VERSION's rows) is one this
    aes-gateway does not know: a later one's store is refused, not marked as this one's."""
    version = next(iter(found), None)
    if version is not None and int(version[0]) > SCHEMA_VERSION:
        raise StoreError(f"{what} was written by a newer aes-gateway (schema {version[0]}; "
                         f"this one knows up to {SCHEMA_VERSION})")


async def migrate(conn: aiosqlite.Connection) -> None:
    """Bring a store written by an earlier version up to this schema; refuse a later one."""
    if await conn.execute_fetchall(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"):
        refuse_newer("the store", await conn.execute_fetchall(SELECT_SCHEMA_VERSION))
    columns = {row[1] for row in await conn.execute_fetchall("PRAGMA table_info(events)")}
    if columns and "pair_closed" not in columns:  # schema 1: pairing windows came later
        await conn.execute(
            "ALTER TABLE events ADD COLUMN pair_closed INTEGER NOT NULL DEFAULT 0"
        )
    progress = {row[1] for row in await conn.execute_fetchall("PRAGMA table_info(sink_progress)")}
    if progress and "feed" not in progress:  # schema 2: every feed counted as the outbox's
        await conn.executescript(
            "ALTER TABLE sink_progress ADD COLUMN feed TEXT NOT NULL DEFAULT 'outbox';"
            " UPDATE sink_progress SET feed = 'quarantine' WHERE sink LIKE '%:quarantine';"
            " UPDATE sink_progress SET feed = 'replay-done' WHERE sink = 'replay-output';"
        )
