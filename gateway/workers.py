"""Parsing in worker processes: the CPU-bound half of deciding a batch, off the event loop.

The event loop keeps the brokers, the store and the relays moving while a worker parses; on a
2-core machine that uses both cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import cache
from multiprocessing import resource_tracker
from typing import Any, Final, TypeVar

import msgspec

from gateway import logs
from gateway.decide import Prepared, prepare
from gateway.envelope import EnvelopeReader
from gateway.model import RawMessage, Version

log = logging.getLogger("aes_gateway.workers")

PR_SET_PDEATHSIG = 1
# After a worker died (the kernel's OOM killer, an operator's kill), the event loop parses
# until a new worker is up this long later: sooner would fight whatever killed it. A worker that
# dies again within STEADY_S of its start waits twice as long, up to RESTART_AT_MOST_S.
RESTART_AFTER_S: Final = 10.0
RESTART_AT_MOST_S: Final = 640.0
STEADY_S: Final = 600.0
WATCH_EVERY_S: Final = 0.5  # how often a batch's wait looks whether its worker is alive
# Signals that reach every process of the service (a closed terminal, `systemctl kill -s USR1`)
# and that the gateway handles itself: the workers ignore them, the tracker never sees them.
PARENTS_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1,
                          signal.SIGUSR2)
T = TypeVar("T")
_RAWS = msgspec.msgpack.Decoder(list[RawMessage])
_PREPARED = msgspec.msgpack.Decoder(list[Prepared])
_ENCODER = msgspec.msgpack.Encoder()


@cache
def _reader(beskedtypes: tuple[tuple[str, Version], ...], max_bytes: int) -> EnvelopeReader:
    return EnvelopeReader(dict(beskedtypes), max_bytes)


def pack(batch: list[Prepared]) -> bytes:
    """A prepared batch as msgpack, to cross from a worker process.

    Only a refused message's body is stored (in the quarantine); a parsed one's crosses
    without it, a quarter of the bytes to copy, encode and decode.
    """
    return _ENCODER.encode([
        item if item.event is None
        else msgspec.structs.replace(item, raw=msgspec.structs.replace(item.raw, body=b""))
        for item in batch
    ])


def unpack(data: bytes) -> list[Prepared]:
    return _PREPARED.decode(data)


def _prepare_encoded(
    data: bytes, beskedtypes: tuple[tuple[str, Version], ...], max_bytes: int
) -> bytes:
    """Runs in the worker: bodies in, prepared batch out, both as msgpack."""
    reader = _reader(beskedtypes, max_bytes)
    return pack([prepare(raw, reader) for raw in _RAWS.decode(data)])


def _ready(beskedtypes: tuple[tuple[str, Version], ...], max_bytes: int) -> int:
    """Runs in the worker at start: imports done and the reader built before the first batch."""
    _reader(beskedtypes, max_bytes)
    return os.getpid()


def _die_with_parent(parent: int) -> None:
    """Worker initializer: a worker must not outlive a gateway killed with SIGKILL. Ctrl-C
    and a closed terminal (which reach every process of the command) and a service manager's
    SIGTERM (every process of the service) are the parent's to act on: it stops the workers
    when it stops. A worker that took them itself died mid-batch; Ctrl-C's KeyboardInterrupt
    was then logged as an error with its traceback. So are SIGUSR1 and SIGUSR2, which the
    parent logs and ignores (`systemctl kill -s USR1` reaches every process of the service)."""
    for signum in PARENTS_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    logs.setup(warn=False)  # a spawned worker starts without the parent's: JSON, CPR masked
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


async def from_worker(pool: ProcessPoolExecutor, task: asyncio.Future[T]) -> T:
    """The result of `task`, run in `pool`; BrokenProcessPool once a worker of it has died.

    concurrent.futures (CPython 3.11) does not notice a worker killed while it wrote a result:
    its thread waits for the rest of the message for ever, the task never ends, and neither
    does the process (its exit joins that thread). Seen in 1 run of 4 with the machine busy.
    So the workers are watched here, and a pool that lost one is given up (`abandon`)."""
    while True:
        done, _ = await asyncio.wait({task}, timeout=WATCH_EVERY_S)
        if done:
            return task.result()
        if any(p.exitcode is not None for p in _processes(pool)):
            abandon(pool)
            forget(task)
            raise BrokenProcessPool("a parse worker died")


def forget(task: asyncio.Future[Any]) -> None:
    """A task of a pool given up, not to be awaited: its failure, when it comes, is taken
    here (asyncio would log it as an error never retrieved)."""
    task.add_done_callback(lambda done: done.cancelled() or done.exception())


def abandon(pool: ProcessPoolExecutor) -> None:
    """Ends a pool that lost a worker without waiting on it: its other workers are killed,
    and its own end of the results' pipe closed, so that its thread, stuck reading a result
    the dead worker began, reads the end of the pipe instead and ends."""
    for process in _processes(pool):
        if process.exitcode is None:
            process.kill()
    results = getattr(pool, "_result_queue", None)
    with contextlib.suppress(OSError, AttributeError):
        results._writer.close()  # type: ignore[union-attr]
    pool.shutdown(wait=False, cancel_futures=True)


def _processes(pool: ProcessPoolExecutor) -> list[multiprocessing.process.BaseProcess]:
    return list((getattr(pool, "_processes", None) or {}).values())


def _tracker_deaf() -> None:
    """Start multiprocessing's resource tracker (the pool's other child) with the parent's
    signals blocked, which it keeps. Started as multiprocessing starts it, it blocks only
    SIGINT and SIGTERM: a SIGUSR1 or SIGHUP to the whole service killed it, and at the stop it
    printed a traceback for each of the pool's semaphores, on stderr, not as JSON."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, PARENTS_SIGNALS)
    try:
        resource_tracker.ensure_running()  # a no-op while it runs
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes started fresh (spawn: no fork of a process with threads) that die
    with the process that started them."""
    _tracker_deaf()
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    )


class ParsePool:
    """Worker processes that parse batches of at least `min_batch` messages.

    A smaller batch is parsed in the event loop: the trip to a worker and back (1.5-2.3 ms
    under load) costs more than parsing it (about 60 us a message), and at a low rate the
    latency is what counts. So are batches that come before the workers are up: a worker
    started by the first batch would hold it, and every message behind it, for the 0.2-0.5 s
    an interpreter takes to start.
    """

    def __init__(
        self, workers: int, beskedtypes: Mapping[str, Version], max_bytes: int,
        min_batch: int = 32, restart_after_s: float = RESTART_AFTER_S,
        on_death: Callable[[], object] = lambda: None,
    ) -> None:
        self._pool = worker_pool(workers)
        self._workers = workers
        self._beskedtypes = tuple(sorted(beskedtypes.items()))
        self._max_bytes = max_bytes
        self.min_batch = min_batch
        self.ready = False
        self.worker_pids: list[int] = []
        self._starting: asyncio.Future[list[int]] | None = None
        self._restart_after = self._next_restart = restart_after_s
        self._restart: asyncio.TimerHandle | None = None
        self._started_at = 0.0
        self._on_death = on_death  # counted in the metrics

    def start(self) -> None:
        """Start the workers in the background; `ready` once they have answered."""
        loop = asyncio.get_running_loop()
        self._started_at = loop.time()
        self._starting = asyncio.gather(*(
            from_worker(self._pool, loop.run_in_executor(
                self._pool, _ready, self._beskedtypes, self._max_bytes))
            for _ in range(self._workers)
        ))
        self._starting.add_done_callback(self._started)

    def _started(self, starting: asyncio.Future[list[int]]) -> None:
        if starting.cancelled():  # closed while starting
            return
        error = starting.exception()
        if isinstance(error, asyncio.CancelledError):  # the pool shut down while starting
            return
        if isinstance(error, BrokenProcessPool):  # killed before it answered
            self._died()
            return
        if error is not None:
            log.warning("parse workers did not start; parsing in the event loop", exc_info=error)
            return
        if self.worker_pids:
            log.info("parse worker started again; parsing off the event loop as before")
        self.worker_pids = starting.result()
        self.ready = True

    def takes(self, count: int) -> bool:
        """Whether a batch of `count` messages goes to a worker."""
        return self.ready and count >= self.min_batch

    async def prepare(self, raws: Sequence[RawMessage]) -> list[Prepared]:
        loop = asyncio.get_running_loop()
        pool = self._pool
        try:
            data = await from_worker(pool, loop.run_in_executor(
                pool, _prepare_encoded, _ENCODER.encode(list(raws)), self._beskedtypes,
                self._max_bytes,
            ))
        except BrokenProcessPool:  # a worker died (killed, out of memory)
            if pool is self._pool:  # not a batch of a pool already replaced
                self._died()
            raise
        return unpack(data)

    def _died(self) -> None:
        """Parse in the event loop meanwhile, and start a new worker later."""
        self.ready = False
        if self._restart is not None:
            return
        self._on_death()
        loop = asyncio.get_running_loop()
        if loop.time() - self._started_at >= STEADY_S:
            self._next_restart = self._restart_after
        delay, self._next_restart = (self._next_restart,
                                     min(self._next_restart * 2, RESTART_AT_MOST_S))
        log.warning("a parse worker died; parsing in the event loop, and a new worker in "
                    "%.3g s", delay)
        self._restart = loop.call_later(delay, self._renew)

    def _renew(self) -> None:
        self._restart = None
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = worker_pool(self._workers)
        self.start()

    def close(self) -> None:
        if self._restart is not None:
            self._restart.cancel()
        if self._starting is not None:
            self._starting.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
