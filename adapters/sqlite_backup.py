"""A consistent copy of the store while the gateway runs (`aes-gateway backup`), and a store
put back from such a copy (`aes-gateway restore`).

Copying the store's file with `cp` while the gateway writes it gives a torn copy: the last
commits sit in `<store>-wal`, and a page may change while it is read. SQLite's online backup
copies the store as of one moment, inside one read transaction; in WAL mode the gateway goes
on committing meanwhile. The copy is a single file (no WAL beside it), private (0600), made
under a temporary name and renamed into place only when whole and checked: a path that holds
a backup holds a complete one. Putting a copy back by hand has a trap: a `<store>-wal` left
from the replaced file would be applied to the copy. `restore` moves it aside with that file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import signal
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import msgspec
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from adapters.files import delete_stamped, sync_directory
from adapters.sqlite_files import (
    COMPANIONS,
    SELECT_SCHEMA_VERSION,
    StoreError,
    claim,
    create_private,
    refuse_foreign,
    refuse_newer,
)

BACKUP_NAME: Final = "{stem}-{stamp}.db"  # a backup's name in a backup directory
REPLACED_NAME: Final = "{name}.replaced-{stamp}"  # a store that `restore` moved aside
STAMP: Final = "%Y%m%dT%H%M%SZ"  # UTC; sorts as it is named


class Made(msgspec.Struct, frozen=True):
    """A backup as made: its path, size, events, seconds, and the older ones deleted."""

    backup: str
    bytes: int
    events: int
    seconds: float
    deleted: list[str]


class Restored(msgspec.Struct, frozen=True):
    """A restore as done: the store, the backup it came from, its events, and where the
    replaced store was kept (None when there was none)."""

    restored: str
    backup: str = msgspec.field(name="from")
    events: int
    replaced_store_kept_as: str | None


def backup(store: Path, dest: Path, keep: int | None = None) -> Made:
    """Copies `store` to `dest`, a new file, or into `dest`, a directory, under the store's
    name and the UTC time. With `keep`, only the newest `keep` backups of this store in that
    directory are kept: a backup holds the personal data that the store's retention purges,
    and must not outlive it by years. Returns what was copied and deleted."""
    _a_store(store, "store")
    into = dest.is_dir()
    if into:
        stamp = dt.datetime.now(dt.UTC).strftime(STAMP)
        dest = dest / BACKUP_NAME.format(stem=store.stem, stamp=stamp)
    elif keep is not None:
        raise StoreError(f"--keep needs a directory of backups; {str(dest)!r} is none")
    if dest.exists() or dest.is_symlink():
        raise StoreError(f"{str(dest)!r} exists; a backup goes to a new path, so that it never "
                         "overwrites an earlier one")
    started = time.monotonic()
    events = _copy_into_place(store, dest)
    deleted = _keep_newest(dest.parent, store.stem, keep) if into and keep is not None else []
    return Made(str(dest.absolute()), dest.stat().st_size, events,
                round(time.monotonic() - started, 2), deleted)


def _keep_newest(directory: Path, stem: str, keep: int) -> list[str]:
    """Deletes all but the newest `keep` backups of the store named `stem` in `directory`:
    only files named as `backup` names them, nothing else there (not a directory or a
    symbolic link named so either)."""
    named = re.compile(re.escape(stem) + r"-\d{8}T\d{6}Z\.db")
    backups = sorted(p for p in directory.iterdir()
                     if named.fullmatch(p.name) and stat.S_ISREG(p.lstat().st_mode))
    old = backups[: max(len(backups) - keep, 0)]
    for path in old:
        path.unlink()
    if old:
        sync_directory(directory)
    return [str(path.absolute()) for path in old]


def restore(copy: Path, store: Path) -> Restored:
    """Puts `copy` (a backup) in the place of `store`, with the gateway stopped: it claims the
    store as the gateway does. The replaced store is kept, renamed with its WAL; the gateway's
    retention purge deletes it `retention_days` later (`delete_replaced`)."""
    _a_store(copy, "backup")
    if not store.parent.is_dir():
        raise StoreError(f"no directory {str(store.parent)!r} for the store")
    held = claim(store)  # StoreError while a gateway (or replay) runs on it
    kept: list[Path] = []
    try:
        if store.exists():
            refuse_foreign(store)
        stamp = dt.datetime.now(dt.UTC).strftime(STAMP)
        aside = store.with_name(REPLACED_NAME.format(name=store.name, stamp=stamp))

        def move_aside() -> None:
            """The old store's file gets a second name, and its WAL moves to go with it; the
            rename of the copy onto the store's path then replaces the file at once. A path
            that names the store names a whole one at every step, the old or the new."""
            if store.exists():
                os.link(store, aside)
                kept.append(aside)
            for suffix in COMPANIONS:
                if Path(f"{store}{suffix}").exists():
                    os.rename(f"{store}{suffix}", f"{aside}{suffix}")

        events = _copy_into_place(copy, store, move_aside)
    finally:
        os.close(held)
    return Restored(str(store.absolute()), str(copy.absolute()), events,
                    str(kept[0].absolute()) if kept else None)


def delete_replaced(store: Path, before: dt.datetime) -> list[str]:
    """Deletes what `restore` moved aside from `store` before `before` (by the time in the
    names, with their `-wal` and `-shm`); returns the names. Every row such a file holds was in
    the store then, and the store's own purge would have deleted it by `retention_days` after."""
    prefix = REPLACED_NAME.format(name=store.name, stamp="")
    named = re.compile(re.escape(prefix) + r"(\d{8}T\d{6}Z)(?:-wal|-shm)?")
    return delete_stamped(store.parent, named, STAMP, before)


def _a_store(path: Path, what: str) -> None:
    """A file that is a store this aes-gateway knows, with its tables: an empty SQLite
    database put back in the store's place would be taken for a new store, and every event id
    and link forgotten; a newer gateway's store would be refused at every start."""
    if not path.is_file() or path.stat().st_size == 0:
        raise StoreError(f"no {what} at {str(path)!r}")
    refuse_foreign(path)
    reader = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        found = reader.execute(SELECT_SCHEMA_VERSION).fetchall()
    except sqlite3.OperationalError:  # no meta table: refuse_foreign let an empty one pass
        raise StoreError(f"{str(path)!r} is an empty SQLite database, not a {what} of a "
                         "store") from None
    finally:
        reader.close()
    refuse_newer(repr(str(path)), found)


def _copy_into_place(
    source: Path, dest: Path, before_rename: Callable[[], None] = lambda: None
) -> int:
    """`source` copied whole and checked under a temporary name beside `dest`, then renamed to
    it; the number of events in it. Nothing is left behind when it fails."""
    if not dest.parent.is_dir():
        raise StoreError(f"no directory {str(dest.parent)!r} for {str(dest.name)!r}")
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    try:
        create_private(partial)
        events = _copy(source, partial)
        # Ctrl-C or SIGTERM (a timer's stop) waits until the renames are done: between them
        # the WAL has moved and the copy is not yet in place
        stopping = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
        try:
            before_rename()
            os.rename(partial, dest)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stopping)
        sync_directory(dest.parent)
    finally:
        for leftover in (partial, *(Path(f"{partial}{s}") for s in (*COMPANIONS, "-journal"))):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    return events


def _copy(store: Path, partial: Path) -> int:
    """The store's pages as of one moment into `partial`, made a single checked file on disk;
    the number of events in it."""
    source = sqlite3.connect(f"{store.absolute().as_uri()}?mode=ro", uri=True)
    target = sqlite3.connect(partial)
    try:
        events = _checked_copy(source, target)
    except sqlite3.Error as exc:  # the disk full, say: nothing written, and why
        raise StoreError(f"copying {str(store)!r} failed: {exc}; nothing was written") from exc
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
        raise StoreError(f"the copy did not check out ({check}); nothing was written")
    return int(target.execute("SELECT COUNT(*) FROM events").fetchone()[0])


def write_metrics(path: Path, made: Made) -> None:
    """A successful backup's figures for node_exporter's textfile collector: written whole
    under a temporary name, then renamed (the collector never reads half a file), and
    readable by the exporter's user whatever the umask (the figures name no person). A failed
    backup writes nothing: the last success's time grows old, and the alert
    `AesGatewayBackupMissing` fires on that, as it does when the timer stops running."""
    registry = CollectorRegistry()
    figures = (
        ("last_success_timestamp_seconds", "when the newest backup was completed", time.time()),
        ("bytes", "the newest backup's size", made.bytes),
        ("events", "events in the newest backup", made.events),
        ("duration_seconds", "how long the newest backup took", made.seconds),
    )
    for name, description, value in figures:
        Gauge(f"aes_gateway_backup_{name}", description, registry=registry).set(value)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(os.open(partial, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644), "wb") as out:
            os.fchmod(out.fileno(), 0o644)
            out.write(generate_latest(registry))
        os.rename(partial, path)
    except OSError as exc:  # the backup is made: said so, and no temporary file left
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise OSError(f"the backup {made.backup} was made, but its metrics could not be "
                      f"written to {str(path)!r}: {exc.strerror or exc}") from exc
