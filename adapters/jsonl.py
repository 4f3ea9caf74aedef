"""The JSON Lines sink: canonical events as lines in a file (or on stdout), each send on disk
before the relay marks it sent, rotated by size, and begun anew when moved away."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import re
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Final

from adapters.files import delete_stamped, sync_directory
from gateway.ports import OutboxRow

log = logging.getLogger("aes_gateway.jsonl")

ROTATED_STAMP: Final = "%Y%m%dT%H%M%S%fZ"  # UTC, when the file was rotated: its newest line


def delete_rotated(target: str, before: dt.datetime) -> list[str]:
    """Deletes the files that rotation made of `target` before `before` (by the time in their
    names, which nothing but a rename changes); returns their names. Nothing else in the
    directory is touched: not another sink's files, nor a name that only looks like one."""
    path = Path(target)
    named = re.compile(re.escape(path.stem) + r"\.(.+)" + re.escape(path.suffix))
    return delete_stamped(path.parent, named, ROTATED_STAMP, before)


class JsonlSink:
    """Canonical events as JSON Lines to a file (or stdout for `-`).

    A send returns once its lines are on disk (fdatasync, in a thread): the relay marks them
    sent only then, so a power loss cannot keep the mark and lose the lines. A file that is
    moved or deleted under the sink (logrotate, an operator) is noticed at the next send, and
    a new one is begun at the path, as Python's WatchedFileHandler does.

    The file holds whole lines only. A send that fails (the disk full) takes its chunk back
    out, and a file opened to go on with cuts an unfinished last line (a process killed mid-
    write): that chunk was never marked sent, so its events come again, whole. Until stop 18
    the next chunk was appended to the half-written line, and a JSON Lines reader found a
    line it could not parse.
    """

    def __init__(
        self, target: str, name: str = "jsonl", rotate_bytes: int = 0, mode: int | None = None
    ) -> None:
        self.name = name
        self.target = target
        self.rotate_bytes = rotate_bytes  # past this size the file is renamed and begun anew
        # each file's, whatever the umask; None: a new file 0600, an existing one as it is
        self.mode = mode
        self._stream: IO[bytes] | None = None
        self._size = 0
        self._identity: tuple[int, int] | None = None  # (device, inode): None for no file

    def open(self, truncate: bool) -> None:
        if self.target == "-":
            self._stream = sys.stdout.buffer
            return
        path = Path(self.target)
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else os.O_APPEND)
        descriptor = os.open(path, flags, 0o600)
        status = os.fstat(descriptor)
        regular = stat.S_ISREG(status.st_mode)
        if regular and self.mode is not None and stat.S_IMODE(status.st_mode) != self.mode:
            os.fchmod(descriptor, self.mode)  # the configured mode, the umask notwithstanding
        # unbuffered: a failed write leaves nothing behind in a buffer to be written later
        self._stream = os.fdopen(descriptor, "wb", buffering=0 if regular else -1)
        self._size = status.st_size
        # a FIFO or a device has nothing to sync and no name to watch
        self._identity = (status.st_dev, status.st_ino) if regular else None
        if regular and self._size:
            self._size = _cut_unfinished_line(descriptor, self._size, self.target)
        if created and regular:
            sync_directory(path.parent)  # the new name survives a power loss, too

    def _rotate(self) -> None:
        """`canonical.jsonl` -> `canonical.<UTC time>.jsonl`, and a new `canonical.jsonl`."""
        self.close()
        path = Path(self.target)
        stamp = dt.datetime.now(dt.UTC).strftime(ROTATED_STAMP)
        path.rename(path.with_name(f"{path.stem}.{stamp}{path.suffix}"))
        self.open(truncate=True)

    def _moved(self) -> bool:
        """The path no longer names the open file: renamed or deleted by someone else."""
        if self._identity is None:
            return False
        try:
            status = os.stat(self.target)
        except FileNotFoundError:
            return True
        return (status.st_dev, status.st_ino) != self._identity

    async def send(self, rows: Sequence[OutboxRow]) -> None:
        if self._stream is None:  # closed after a failed send
            self.open(truncate=False)
        elif self._moved():
            log.warning("%s was moved or deleted; beginning a new file there", self.target)
            self.close()
            self.open(truncate=False)
        elif self.rotate_bytes and self._identity is not None and self._size >= self.rotate_bytes:
            self._rotate()
        assert self._stream is not None  # noqa: S101 - reopened
        data = b"".join(row.body + b"\n" for row in rows)
        if self._identity is None:  # stdout, a FIFO: nothing to take back or sync
            self._stream.write(data)
            self._stream.flush()
            return
        descriptor = self._stream.fileno()
        try:
            written = 0
            while written < len(data):  # an unbuffered write may take part of it
                written += os.write(descriptor, memoryview(data)[written:])
            await asyncio.to_thread(os.fdatasync, descriptor)
        except BaseException:
            # Take the chunk back out; if even that fails, reopening cuts its unfinished line.
            with contextlib.suppress(OSError):
                os.ftruncate(descriptor, self._size)
            self.close()
            raise
        self._size += len(data)

    def close(self) -> None:
        if self._stream is not None and self.target != "-":
            self._stream.close()
        self._stream = None


def _cut_unfinished_line(descriptor: int, size: int, name: str) -> int:
    """Cuts the file `name`, just opened for writing at `descriptor`, after its last newline;
    returns its size then."""
    end = size
    reader = os.open(name, os.O_RDONLY)  # the descriptor is write-only
    try:
        while end > 0:
            start = max(0, end - 65536)
            block = os.pread(reader, end - start, start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
    finally:
        os.close(reader)
    if end < size:
        log.warning("%s ended in an unfinished line (%d bytes, from an interrupted write); cut: "
                    "its event comes again", name, size - end)
        os.ftruncate(descriptor, end)
    return end
