"""A consistent copy of the store while the gateway runs (`aes-gateway backup`).

Copying the store's file with `cp` while the gateway writes it gives a torn copy: the last
commits sit in `<store>-wal`, and a page may change while it is read. SQLite's online backup
copies the store as of one moment, inside one read transaction; in WAL mode the gateway goes
on committing meanwhile. The copy is a single file (no WAL beside it), private (0600), made
under a temporary name and renamed into place only when whole and checked: a path that holds
a backup holds a complete one.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

from adapters.files import sync_directory
from adapters.sqlite_files import StoreError, create_private, refuse_foreign


def backup(store: Path, dest: Path) -> dict[str, object]:
    """Copies `store` to `dest` (which must not exist); returns what was copied."""
    if not store.is_file() or store.stat().st_size == 0:
        raise StoreError(f"no store at {str(store)!r}")
    refuse_foreign(store)
    if dest.exists() or dest.is_symlink():
        raise StoreError(f"{str(dest)!r} exists; a backup goes to a new path, so that it never "
                         "overwrites an earlier one")
    if not dest.parent.is_dir():
        raise StoreError(f"no directory {str(dest.parent)!r} for the backup")
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    started = time.monotonic()
    try:
        create_private(partial)
        events = _copy(store, partial)
        os.rename(partial, dest)
        sync_directory(dest.parent)
    finally:
        for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm"),
                         Path(f"{partial}-journal")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    return {"backup": str(dest.absolute()), "bytes": dest.stat().st_size, "events": events,
            "seconds": round(time.monotonic() - started, 2)}


def _copy(store: Path, partial: Path) -> int:
    """The store's pages as of one moment into `partial`, made a single checked file on disk;
    the number of events in it."""
    source = sqlite3.connect(f"{store.absolute().as_uri()}?mode=ro", uri=True)
    target = sqlite3.connect(partial)
    try:
        events = _checked_copy(source, target)
    except sqlite3.Error as exc:  # the backup's disk full, say: no backup, and why
        raise StoreError(f"the backup failed: {exc}; no backup was written") from exc
    finally:
        target.close()
        source.close()
    descriptor = os.open(partial, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # on disk before it takes the backup's name
    finally:
        os.close(descriptor)
    return events


def _checked_copy(source: sqlite3.Connection, target: sqlite3.Connection) -> int:
    source.execute("PRAGMA busy_timeout = 10000")
    source.backup(target)  # all pages in one step: one read transaction, one moment
    target.execute("PRAGMA journal_mode = DELETE")  # one file to keep: no -wal beside it
    check = target.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise StoreError(f"the copy did not check out ({check}); no backup was written")
    return int(target.execute("SELECT COUNT(*) FROM events").fetchone()[0])
