"""Message files in, for replay: listed in arrival order, read, and parsed in batches (in worker
processes for a big input); and a directory made durable (`sync_directory`), for every
adapter that names a file. The JSON Lines sink is in jsonl.py."""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import logging
import os
import re
import stat
from array import array
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from itertools import pairwise
from pathlib import Path
from typing import Final, overload

from gateway.decide import Prepared, Result, prepare
from gateway.envelope import DEFAULT_MAX_BYTES, EnvelopeReader, oversized_keep
from gateway.model import RawMessage
from gateway.workers import forget, from_worker, pack, unpack, worker_pool

log = logging.getLogger("aes_gateway.files")


class InputError(Exception):
    """An input path that cannot be read."""


class InputFiles(Sequence[str]):
    """The files to replay, in order, as paths; kept compactly, as a backlog may be millions
    of files: each name's bytes in one buffer, a name's start in an array (about 20 bytes a
    file, against about 100 for a list of path strings)."""

    def __init__(self) -> None:
        self._names = bytearray()
        self._starts = array("Q")
        self._folders: list[tuple[int, str]] = []  # (index of its first file, folder)

    def add(self, folder: str, names: Sequence[bytes]) -> None:
        """Files of `folder`, in the order given, after those added before."""
        if not names:
            return
        self._folders.append((len(self._starts), folder))
        for name in names:
            self._starts.append(len(self._names))
            self._names += name

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return [self._paths(i, i + 1)[0] for i in range(start, stop, step)]
            return self._paths(start, stop)
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self._paths(index % len(self), index % len(self) + 1)[0]

    def _paths(self, start: int, stop: int) -> list[str]:
        """The paths of files start..stop-1, a folder's run at a time."""
        paths: list[str] = []
        names, starts, folders = memoryview(self._names), self._starts, self._folders
        while start < stop:
            at = bisect.bisect_right(folders, (start, "\U0010ffff")) - 1
            folder = folders[at][1] + os.sep
            end = min(stop, folders[at + 1][0] if at + 1 < len(folders) else len(starts))
            cuts = [*starts[start:end], starts[end] if end < len(starts) else len(names)]
            paths += [folder + os.fsdecode(bytes(names[a:b])) for a, b in pairwise(cuts)]
            start = end
        return paths


def list_inputs(inputs: Sequence[Path]) -> InputFiles:
    """Files as given; a directory's `*.xml` in file-name order (which is arrival order),
    sorted by their bytes, as `ls` sorts in the C locale."""
    files = InputFiles()
    for path in inputs:
        if path.is_dir():
            others = 0
            names: list[bytes] = []
            with os.scandir(os.fsencode(path)) as entries:  # d_type: no stat per file
                for entry in entries:
                    if entry.name.endswith(b".xml") and entry.is_file():
                        names.append(entry.name)
                    else:
                        others += 1
            names.sort()
            files.add(str(path), names)
            _left_out(path, len(names), others)
        elif path.is_file():
            files.add(str(path.parent), [os.fsencode(path.name)])
        else:
            raise InputError(f"input {str(path)!r} is neither a file nor a directory")
    return files


def _left_out(directory: Path, read: int, others: int) -> None:
    """A directory given to replay whose entries are not all read is said so: a wrong
    directory (the capture's parent, say) would otherwise give an empty replay in silence."""
    if read == 0:
        log.warning("input directory %s holds no *.xml files: nothing is read from it "
                    "(%d other entries; subdirectories are not read)", directory, others,
                    extra={"left_out": others})
    elif others:
        log.info("input directory %s: %d *.xml files read, %d other entries left out "
                 "(subdirectories are not read)", directory, read, others,
                 extra={"left_out": others})


class _NothingToAcknowledge:
    async def settle(self, deliveries: Sequence[object], results: Sequence[Result]) -> None:
        return None

    async def fail(self, deliveries: Sequence[object]) -> None:
        return None


NO_ACK: Final = _NothingToAcknowledge()


class FileDelivery:
    """A message read from a file; settling it has nothing to acknowledge."""

    settler = NO_ACK

    def __init__(
        self, path: str | Path, read_at: dt.datetime | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        try:
            body = _read(path, oversized_keep(max_bytes))
        except OSError as exc:
            raise InputError(f"cannot read {str(path)!r}: {exc.strerror}") from exc
        self.raw = RawMessage(body, f"file:{_printable(os.path.basename(path))}",
                              read_at or dt.datetime.now(dt.UTC))


def _printable(name: str) -> str:
    """A file name as valid text: a name that is not UTF-8 (a Latin-1 "æøå" from an old file
    share) comes from the OS with surrogates, which the store and the logs cannot encode."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


_BUFFER = bytearray(256 * 1024)


def _read(path: str | Path, keep: int) -> bytes:
    """A file in three system calls (open() takes seven): replay reads millions. Of one
    bigger than `keep` (to be refused as too large) only its first `keep` bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.readv(fd, [_BUFFER])
        if size < len(_BUFFER):
            return bytes(memoryview(_BUFFER)[: min(size, keep)])
        rest = [bytes(_BUFFER)]  # a big one: the slow way
        kept = size
        while kept < keep and (chunk := os.read(fd, min(1 << 20, keep - kept))):
            rest.append(chunk)
            kept += len(chunk)
        return b"".join(rest)[:keep]
    finally:
        os.close(fd)


# Bytes read into one batch after its first file. Simulated traffic stays below it (8 000
# messages of 1.6 KB on average: 12.8 MB); messages of 4 KB make batches of about 4 000, and
# big ones (up to 1 MiB, or 16 MiB kept of an oversized one) smaller batches still, instead
# of up to 8 000 x 16 MiB in memory. Each file's parsed fields and canonical event are held
# beside its bytes, so a batch takes a few times this.
BATCH_BYTES: Final = 16 * 1024 * 1024


def _prepare_files(
    paths: Sequence[str], max_bytes: int, batch_bytes: int = BATCH_BYTES
) -> list[Prepared]:
    """The first of `paths`, read and parsed, and as many after it as `batch_bytes` allows:
    the caller reads the rest as a batch of its own."""
    reader = EnvelopeReader(max_bytes=max_bytes)
    read_at = dt.datetime.now(dt.UTC)  # received_at is kept in whole seconds: once a batch
    prepared: list[Prepared] = []
    held = 0
    for path in paths:
        if held > batch_bytes:
            break
        raw = FileDelivery(path, read_at, max_bytes).raw
        held += len(raw.body) if prepared else 0
        prepared.append(prepare(raw, reader))
    return prepared


def _prepare_files_encoded(paths: Sequence[str], max_bytes: int, batch_bytes: int) -> bytes:
    """Runs in the worker process: read and parse, return the batch as msgpack."""
    return pack(_prepare_files(paths, max_bytes, batch_bytes))


class WorkerBatch(list[Prepared]):
    """A batch parsed in a worker: its parsed messages crossed without their bodies
    (workers.pack). Should one of them be quarantined after all (`internal_error` while
    deciding), `raws` reads its file again, so that the quarantine keeps the body whole for
    `quarantine replay` after a fix."""

    def __init__(self, batch: list[Prepared], paths: Sequence[str], max_bytes: int) -> None:
        super().__init__(batch)
        self.paths = paths
        self.keep = oversized_keep(max_bytes)

    def raws(self) -> list[RawMessage]:
        raws = []
        for item, path in zip(self, self.paths, strict=True):
            if item.raw.body or item.event is None:
                raws.append(item.raw)
                continue
            try:
                raws.append(RawMessage(_read(path, self.keep), item.raw.source,
                                       item.raw.received_at))
            except OSError as exc:  # moved since: the quarantine says what it can
                log.warning("cannot read %r again for its body: %s", path, exc.strerror)
                raws.append(item.raw)
        return raws


RAMP_FROM: Final = 500  # messages in the first and the last batch


def batch_bounds(total: int, size: int, smallest: int = RAMP_FROM) -> list[tuple[int, int]]:
    """(start, end) of each batch: `size` messages, but ramped up from `smallest` at the
    start and down to it at the end, doubling, so that the loop gets its first batch early
    and the worker is not idle while the loop commits a big last one."""
    ramp: list[int] = []
    step = min(smallest, size)
    while step < size and 2 * (sum(ramp) + step) <= total:
        ramp.append(step)
        step *= 2
    middle = total - 2 * sum(ramp)
    sizes = [*ramp, *([size] * (middle // size)), *([middle % size] if middle % size else []),
             *reversed(ramp)]
    bounds, start = [], 0
    for count in sizes:
        bounds.append((start, start + count))
        start += count
    return bounds


async def prepared_batches(
    files: Sequence[str], size: int, max_bytes: int, workers: int = 0,
    batch_bytes: int = BATCH_BYTES,
) -> AsyncIterator[list[Prepared]]:
    """Batches of read and parsed files, in order.

    With workers, parsing (the CPU-bound half of replay) runs in worker processes a few
    batches ahead, while this process decides and commits: it uses both cores. When the
    batch it needs next is not ready yet, this process parses the next unclaimed batch itself
    instead of waiting idle (and keeps it, in order, for later). Files that a batch left out
    (`batch_bytes`) are parsed here, as the batches that follow it.
    """
    chunks = deque(batch_bounds(len(files), size))  # paths made when a batch's turn comes

    def take() -> Sequence[str]:
        start, end = chunks.popleft()
        return files[start:end]

    def parse(chunk: Sequence[str]) -> list[Prepared]:  # in this process
        return _prepare_files(chunk, max_bytes, batch_bytes)

    def here(chunk: Sequence[str]) -> tuple[list[Prepared], Sequence[str]]:
        return parse(chunk), chunk

    def with_rest(batch: list[Prepared], chunk: Sequence[str]) -> Iterator[list[Prepared]]:
        yield batch
        while len(batch) < len(chunk):
            chunk = chunk[len(batch):]
            batch = parse(chunk)
            yield batch

    if workers < 1:
        while chunks:
            for each in with_rest(*here(take())):
                yield each
        return
    loop = asyncio.get_running_loop()
    with worker_pool(workers) as pool:
        # in file order: a batch parsed here, or one coming from a worker, with its paths
        slots: deque[tuple[asyncio.Future[bytes] | list[Prepared], Sequence[str]]] = deque()

        broken = False  # a worker died (killed, or out of memory): this process parses the rest

        def died() -> None:
            nonlocal broken
            if not broken:
                log.warning("a parse worker died; this process parses the rest")
            broken = True

        def keep_workers_busy() -> None:  # a few batches queued per worker
            while (not broken and chunks
                   and sum(not isinstance(s[0], list) for s in slots) < workers + 2):
                chunk = take()
                try:
                    slots.append((loop.run_in_executor(pool, _prepare_files_encoded, chunk,
                                                       max_bytes, batch_bytes), chunk))
                except BrokenProcessPool:
                    died()
                    slots.append(here(chunk))

        keep_workers_busy()
        while slots or chunks:
            if not slots:  # no workers left to wait for
                slots.append(here(take()))
            head = slots[0][0]
            if not isinstance(head, list) and not head.done() and chunks:
                # rather than wait: parse a later batch here
                slots.append(here(take()))
                await asyncio.sleep(0)  # let the worker's result in
                continue
            parsed, chunk = slots.popleft()
            batch: list[Prepared]
            if isinstance(parsed, list):
                batch = parsed
            elif broken:  # the pool is given up, its tasks cancelled: parsed here instead
                forget(parsed)
                batch = parse(chunk)
            else:
                try:
                    got = unpack(await from_worker(pool, parsed))
                    batch = WorkerBatch(got, chunk[:len(got)], max_bytes)
                except BrokenProcessPool:
                    died()
                    batch = parse(chunk)
            keep_workers_busy()
            for each in with_rest(batch, chunk):
                yield each


def delete_stamped(directory: Path, named: re.Pattern[str], stamp: str,
                   before: dt.datetime) -> list[str]:
    """Deletes the regular files in `directory` whose names `named` matches whole and whose
    first group, read with the strftime format `stamp` as UTC, is before `before`; returns
    their names, sorted. Nothing else is touched: another name, a name whose time does not
    read, a directory or a symbolic link named so. The retention of the files that lie beside
    the store and the sinks (rotated JSON Lines files, replaced stores)."""
    deleted = []
    for entry in directory.iterdir():
        found = named.fullmatch(entry.name)
        if found is None or not stat.S_ISREG(entry.lstat().st_mode):
            continue
        try:
            made = dt.datetime.strptime(found[1], stamp).replace(tzinfo=dt.UTC)
        except ValueError:
            continue
        if made < before:
            entry.unlink()
            deleted.append(entry.name)
    if deleted:
        sync_directory(directory)
    return sorted(deleted)


def sync_directory(path: Path) -> None:
    """A directory's entries (a file's new name) made durable, as a file's fsync its data."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
