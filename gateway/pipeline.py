"""Async orchestration over the ports: receive -> decide -> commit -> settle -> relay."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from gateway.correlate import DEFAULT_TOLERANCE_S
from gateway.decide import Prepared, Result, batch_keys, decide_batch, internal_error, prepare
from gateway.envelope import EnvelopeReader
from gateway.model import Outcome
from gateway.ports import Delivery, Rereadable, Settler, Sink, Store
from gateway.workers import ParsePool

log = logging.getLogger("aes_gateway.pipeline")

ResultHook = Callable[[Sequence[Prepared], Sequence[Result]], None]
Fetch = Callable[[int, int], Awaitable[Sequence[Any]]]
Send = Callable[[Sequence[Any]], Awaitable[None]]


class AfterCommit(Exception):
    """A failure after the batch was committed and its deliveries settled: there is nothing
    to hand back. The live service logs it and goes on; a replay ends with it (its summary
    would be short)."""


class Pipeline:
    """Decides batches of deliveries; settles each only after the batch is committed."""

    def __init__(
        self,
        store: Store,
        reader: EnvelopeReader | None = None,
        tolerance_s: int = DEFAULT_TOLERANCE_S,
        hooks: Sequence[ResultHook] = (),
        parse_pool: ParsePool | None = None,
    ) -> None:
        self.store = store
        self.reader = reader or EnvelopeReader()
        self.parse_pool = parse_pool
        self.tolerance_s = tolerance_s
        self.hooks = list(hooks)
        self.quarantine_log = QuarantineLog()

    def prepare(self, deliveries: Sequence[Delivery]) -> list[Prepared]:
        return [prepare(d.raw, self.reader) for d in deliveries]

    async def parse(self, deliveries: Sequence[Delivery]) -> list[Prepared]:
        """The CPU-bound half: in the parse pool, or here for a small batch. If it fails
        (the pool broke), the deliveries are handed back to their sources."""
        pool = self.parse_pool
        try:
            if pool is not None and pool.takes(len(deliveries)):
                return await pool.prepare([d.raw for d in deliveries])
            return self.prepare(deliveries)
        except Exception:
            await hand_back(deliveries)
            raise

    async def process(self, deliveries: Sequence[Delivery]) -> list[Result]:
        return await self.commit(await self.parse(deliveries), deliveries)

    async def commit(
        self, batch: Sequence[Prepared], deliveries: Sequence[Delivery] = ()
    ) -> list[Result]:
        """Decide and commit a prepared batch, then settle its deliveries (if it has any)."""
        try:
            state = await self.store.load_state(batch_keys(batch))
            try:
                results, effects = decide_batch(batch, state, self.tolerance_s)
            except Exception:  # a bug in deciding: see _one_at_a_time
                batch, results = await self._one_at_a_time(batch, deliveries)
            else:
                await self.store.commit(batch, results, effects)
        except Exception:
            await hand_back(deliveries)
            raise
        for settler, group in _by_settler(deliveries, results if deliveries else []).items():
            try:
                await settler.settle([d for d, _ in group], [r for _, r in group if r is not None])
            except Exception:  # one source's trouble must not keep the others' acks back
                log.exception("settling a committed batch failed; the source will redeliver")
        try:
            for hook in self.hooks:
                hook(batch, results)
            self.quarantine_log.note(batch, results)
        except Exception as exc:  # a bug in counting, not a failed commit
            raise AfterCommit("recording a committed batch's outcomes (metrics, summary, log) "
                              "failed; the batch is committed and settled") from exc
        return results

    async def _one_at_a_time(
        self, batch: Sequence[Prepared], deliveries: Sequence[Delivery]
    ) -> tuple[list[Prepared], list[Result]]:
        """The batch decided again, a message at a time, each committed on its own, after
        deciding it as a whole failed (a bug in the correlation). Raised, that failure would
        fail the batch again at every redelivery, and no message behind it would ever be
        decided. A message that fails on its own is quarantined as `internal_error`."""
        log.error("deciding a batch of %d messages failed; deciding them one at a time",
                  len(batch), exc_info=True)
        # A parsed message crossed from the parse worker without its body: the delivery has
        # it, or, for a replay's file, the file.
        if deliveries:
            raws = [d.raw for d in deliveries]
        elif isinstance(batch, Rereadable):
            raws = batch.raws()
        else:
            raws = [item.raw for item in batch]
        decided: list[Prepared] = []
        results: list[Result] = []
        for item, raw in zip(batch, raws, strict=True):
            single = [item]
            state = await self.store.load_state(batch_keys(single))
            try:
                found, effects = decide_batch(single, state, self.tolerance_s)
            except Exception as exc:
                single = [internal_error(raw, item.key, item.version, "deciding", exc)]
                state = await self.store.load_state(batch_keys(single))  # not half-changed
                found, effects = decide_batch(single, state, self.tolerance_s)
            await self.store.commit(single, found, effects)
            decided += single
            results += found
        return decided, results


async def hand_back(deliveries: Sequence[Delivery]) -> None:
    """Each delivery back to its source, undecided: it is delivered again."""
    for settler, group in _by_settler(deliveries, [None] * len(deliveries)).items():
        await settler.fail([d for d, _ in group])


def _by_settler(
    deliveries: Sequence[Delivery], results: Sequence[Result | None]
) -> dict[Settler, list[tuple[Delivery, Result | None]]]:
    groups: dict[Settler, list[tuple[Delivery, Result | None]]] = {}
    for delivery, result in zip(deliveries, results, strict=True):
        groups.setdefault(delivery.settler, []).append((delivery, result))
    return groups


QUARANTINE_LOG_FIRST = 10  # quarantined messages logged one by one, per reason and minute
QUARANTINE_LOG_EVERY_S = 60.0


@dataclasses.dataclass
class _Held:
    """One reason's quarantined messages in one stretch of `QuarantineLog.every_s`."""

    began: float
    logged: int = 0
    held_back: int = 0


class QuarantineLog:
    """Quarantined messages logged one by one, up to `first` per reason in each `every_s`;
    the rest of that time are counted and logged as one line. A replay of a big capture with
    a few percent of bad input, or a sender gone wrong, would otherwise write a line for each:
    the store's quarantine and the metrics keep every one."""

    def __init__(self, first: int = QUARANTINE_LOG_FIRST,
                 every_s: float = QUARANTINE_LOG_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.first = first
        self.every_s = every_s
        self._clock = clock
        self._by_reason: dict[str, _Held] = {}

    def note(self, batch: Sequence[Prepared], results: Sequence[Result]) -> None:
        now = self._clock()
        self._close(now)
        debug = log.isEnabledFor(logging.DEBUG)
        quarantined = Outcome.QUARANTINED
        for item, result in zip(batch, results, strict=True):
            if result.outcome is quarantined:
                self._quarantined(item, result, now)
            elif debug:
                log.debug(
                    "message decided",
                    extra={"message_key": result.key, "outcome": result.outcome,
                           "event_id": result.event_id, "kind": result.duplicate_kind},
                )

    def close_due(self) -> None:
        """Logs the counts whose time is over (the service calls it when idle, too)."""
        self._close(self._clock())

    def flush(self) -> None:
        """Logs every count held now (at the end of a replay, at a stop)."""
        self._close(float("inf"))

    def _quarantined(self, item: Prepared, result: Result, now: float) -> None:
        reason = result.reason or "?"
        held = self._by_reason.setdefault(reason, _Held(now))
        if held.logged < self.first:
            held.logged += 1
            log.warning(
                "message quarantined",
                extra={"message_key": result.key, "reason": reason,
                       "detail": result.detail, "source": item.raw.source},
            )
            return
        if not held.held_back:
            log.warning("more messages quarantined as %s: counted, not logged one by one, for "
                        "the next %.0f s; `aes-gateway quarantine list` shows every one",
                        reason, held.began + self.every_s - now, extra={"reason": reason})
        held.held_back += 1

    def _close(self, now: float) -> None:
        for reason, held in list(self._by_reason.items()):
            if now - held.began >= self.every_s:
                del self._by_reason[reason]
                if held.held_back:
                    log.warning("%d more messages quarantined as %s were not logged one by one",
                                held.held_back, reason,
                                extra={"reason": reason, "held_back": held.held_back})


REMIND_EVERY_S = 600.0  # how often a lasting outage is logged again
FINISH_ON_STOP_S = 2.0  # how long a relay stopped mid-send waits for that send to finish


class Outage:
    """When a sink or source became unavailable, and how often it was tried since."""

    __slots__ = ("attempts", "reminded_at", "since")

    def __init__(self) -> None:
        self.since = self.reminded_at = asyncio.get_running_loop().time()
        self.attempts = 0

    def lasted_s(self) -> float:
        return asyncio.get_running_loop().time() - self.since

    def remind(self) -> bool:
        """True once every REMIND_EVERY_S while the outage lasts."""
        now = asyncio.get_running_loop().time()
        if now - self.reminded_at < REMIND_EVERY_S:
            return False
        self.reminded_at = now
        return True


class Relay:
    """Feeds one sink from one stored feed (the outbox, or the quarantine), in order,
    remembering its progress in the store. A crash between send and mark may repeat rows."""

    def __init__(
        self,
        store: Store,
        sink: Sink,
        batch_size: int = 1000,
        name: str | None = None,
        fetch: Fetch | None = None,
        send: Send | None = None,
        max_backlog: int | None = None,
        stall_after_s: float = 10.0,
        feed: str = "outbox",
    ) -> None:
        self.store = store
        self.max_backlog = max_backlog  # outbox relays: throttle the intake past this
        self.sink = sink
        self.name = name or sink.name
        self.batch_size = batch_size
        self._fetch: Fetch = fetch or store.outbox_after
        self._send: Send = send or sink.send
        self.position = 0
        self.wake = asyncio.Event()
        self.stalled = False  # the last attempt to relay failed, or the current one hangs
        self.stall_after_s = stall_after_s
        self.feed = feed  # outbox, quarantine or replay: what the store keeps for it

    async def start(self, from_end: int | None = None) -> bool:
        """Load progress; a new sink starts at `from_end` (or the beginning). Either way the
        store learns what feeds it (a resumed replay is unfinished again). True if new."""
        known = await self.store.sink_progress(self.name)
        self.position = known if known is not None else from_end or 0
        await self.store.register_sink(self.name, self.position, self.feed)
        return known is None

    async def pump(self) -> int:
        """Relay one chunk; returns how many rows went out."""
        rows = await self._fetch(self.position, self.batch_size)
        if not rows:
            return 0
        # A sink can hang rather than fail (RabbitMQ blocks publishers during a memory or
        # disk alarm): past stall_after_s it counts as stalled, while the send goes on.
        watch = asyncio.get_running_loop().call_later(self.stall_after_s, self._hanging, rows)
        sending = asyncio.ensure_future(self._send(rows))
        try:
            await asyncio.shield(sending)
        except asyncio.CancelledError:
            # Stopped mid-send (Ctrl-C in a replay): a chunk that reaches its sink within
            # moments is marked, so a stop repeats nothing on the next start. One that hangs
            # is given up: its rows stay, to be sent again (repeats, never losses).
            done, _ = await asyncio.wait({sending}, timeout=FINISH_ON_STOP_S)
            if sending in done and not sending.cancelled() and sending.exception() is None:
                await self._mark(rows)
            else:
                sending.cancel()
            raise
        finally:
            watch.cancel()
        self.stalled = False
        await self._mark(rows)
        return len(rows)

    async def _mark(self, rows: Sequence[Any]) -> None:
        self.position = rows[-1].seq
        await self.store.mark_sent(self.name, self.position)

    def _hanging(self, rows: Sequence[Any]) -> None:
        self.stalled = True
        log.warning("sink %s has not taken %d events in %.0f s; still trying", self.name,
                    len(rows), self.stall_after_s)

    async def caught_up(self) -> bool:
        return not await self._fetch(self.position, 1)

    async def drain(self) -> int:
        total = 0
        while (sent := await self.pump()) > 0:
            total += sent
        return total

    async def run(self, poll_s: float = 1.0, max_backoff_s: float = 2.0) -> None:
        """Relay forever: woken after commits, polling now and then, backing off on errors
        (at most 2 s: a returning sink is fed again within seconds). An outage is logged as
        it begins (with the error), every `REMIND_EVERY_S` while it lasts, and as it ends."""
        backoff = 0.5
        outage: Outage | None = None
        while True:
            try:
                await self.drain()
            except Exception as exc:  # the sink is down: keep the rows, try again later
                self.stalled = True
                if outage is None:
                    outage = Outage()
                    log.warning("sink %s failed; retrying every %.1f-%.1f s until it takes "
                                "the events", self.name, backoff, max_backoff_s, exc_info=True)
                elif outage.remind():
                    log.warning("sink %s still failing after %.0f s (%d attempts): %r",
                                self.name, outage.lasted_s(), outage.attempts, exc)
                else:
                    log.debug("sink %s failed again", self.name, exc_info=True)
                outage.attempts += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, max_backoff_s)
                continue
            backoff = 0.5
            self.stalled = False
            if outage is not None:
                log.info("sink %s takes events again after %.1f s (%d failed attempts)",
                         self.name, outage.lasted_s(), outage.attempts)
                outage = None
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), poll_s)
