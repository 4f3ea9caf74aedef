"""The live service over ports: sources feed one intake, batches are decided and group-committed,
relays feed the sinks from the store. Adapters are built and passed in by adapters/runtime.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from gateway.pipeline import AfterCommit, Outage, Pipeline, Relay, hand_back
from gateway.ports import Delivery

log = logging.getLogger("aes_gateway.service")


class Source(Protocol):
    name: str
    last_message_at: float | None

    @property
    def connected(self) -> bool: ...

    async def start(self, stop: asyncio.Event) -> bool: ...

    async def stop_consuming(self) -> None: ...

    async def close(self) -> None: ...


class SourceWatch:
    """Logs a source's outage as it begins and as it ends, from what each pass of the observer
    sees (the AMQP client itself logs every reconnection attempt; the logs' `Repeats` filter
    passes those once a minute). A source not yet connected logs its own retries."""

    def __init__(self) -> None:
        self._outages: dict[str, Outage] = {}
        self._connected: set[str] = set()

    def update(self, sources: Sequence[Source]) -> None:
        for source in sources:
            name, outage = source.name, self._outages.get(source.name)
            if source.connected:
                if outage is not None:
                    log.info("source %s connected again after %.0f s", name, outage.lasted_s(),
                             extra={"source": name})
                    del self._outages[name]
                self._connected.add(name)
            elif name in self._connected and outage is None:
                self._outages[name] = Outage()
                log.warning("source %s disconnected: nothing is received from it; "
                            "reconnecting", name, extra={"source": name})
            elif outage is not None and outage.remind():
                log.warning("source %s still disconnected after %.0f s", name,
                            outage.lasted_s(), extra={"source": name})


class Service:
    """Runs until `stop` is set, or, with `until_idle`, once nothing arrived for that long and
    every sink has everything."""

    def __init__(
        self,
        pipeline: Pipeline,
        intake: asyncio.Queue[Delivery],
        sources: Sequence[Source],
        relays: Sequence[Relay],
        batch_size: int = 500,
        batch_wait_s: float = 0.02,
        batch_gap_s: float = 0.002,
        closers: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        self.pipeline = pipeline
        self.intake = intake
        self.sources = list(sources)
        self.relays = list(relays)
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self.batch_gap_s = batch_gap_s
        self.closers = list(closers)
        self.store_ok = True
        self.throttled = False
        self._backoff = 0.25
        self._busy = False
        self._last_activity = 0.0
        self._relays_started = False
        self._stopping = False

    @property
    def ready(self) -> bool:
        """Store writable, sources connected, sinks not stalled."""
        return (self.store_ok and all(source.connected for source in self.sources)
                and not any(relay.stalled for relay in self.relays))

    async def start_relays(self) -> None:
        """Each relay loads its progress and registers its sink with the store, once: before
        the first purge (which keeps only the rows some registered sink still needs)."""
        if self._relays_started:
            return
        for relay in self.relays:
            await relay.start()
        self._relays_started = True

    async def run(self, stop: asyncio.Event, until_idle: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._last_activity = loop.time()
        await self.start_relays()
        tasks = [asyncio.create_task(relay.run(), name=f"relay {relay.name}")
                 for relay in self.relays]
        batcher = asyncio.create_task(self._batches(), name="batcher")
        failed: list[BaseException] = []

        def started(task: asyncio.Task[bool]) -> None:
            """A source that cannot start (a push port taken) stops the service: running on
            without it would look healthy to everything but /readyz."""
            if not task.cancelled() and (error := task.exception()) is not None:
                log.error("%s could not start: %s", task.get_name(), error, exc_info=error)
                failed.append(error)
                stop.set()

        def ended(task: asyncio.Task[None]) -> None:
            """The batcher ends only when cancelled at the stop. Ended by a bug, nothing would
            be decided again while the gateway looked alive: it stops instead, with an error,
            and its service manager starts it again."""
            if not task.cancelled() and (error := task.exception()) is not None:
                log.critical("deciding batches failed; stopping", exc_info=error)
                failed.append(error)
                stop.set()

        batcher.add_done_callback(ended)
        starting = [asyncio.create_task(source.start(stop), name=source.name)
                    for source in self.sources]
        for task in starting:
            task.add_done_callback(started)
        try:
            if until_idle is None:
                await stop.wait()
            else:
                await self._until_idle(stop, until_idle)
        finally:
            for task in starting:
                task.cancel()
            await self._shutdown(batcher, tasks)
        if failed:
            raise failed[0]

    async def _batches(self) -> None:
        while True:
            batch = [await self.intake.get()]
            self._busy = True
            try:
                try:
                    await self._throttle()
                    await self._fill(batch)
                except Exception:  # the store failing where it is only read (an I/O error)
                    await hand_back(batch)
                    await self._store_failed("reading the store for a batch failed")
                    continue  # raised, it would end this task, and nothing would be decided
                await self._process(batch)
            finally:
                self._busy = False

    async def _throttle(self) -> None:
        """Backpressure, not loss: while a sink is too far behind, take no more input (AMQP
        deliveries wait unacknowledged in the broker, push answers 40 once the intake is full)."""
        bounded = [r for r in self.relays if r.max_backlog is not None]
        # Stopping, the sources take nothing more: what they delivered is decided, behind
        # the backlog as it is. Held back, it would hold the stop for as long as the sink lags.
        while bounded and not self._stopping:
            end = await self.pipeline.store.outbox_end()
            behind = [(r.name, end - r.position) for r in bounded
                      if end - r.position > (r.max_backlog or 0)]
            if not behind:
                if self.throttled:
                    log.info("sinks caught up: intake resumed")
                self.throttled = False
                return
            if not self.throttled:
                log.warning("intake throttled: sink %s has %d events waiting", *behind[0])
            self.throttled = True
            await asyncio.sleep(0.2)

    async def _fill(self, batch: list[Delivery]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait_s
        while len(batch) < self.batch_size:
            try:
                batch.append(self.intake.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            # Group commit without idle waiting: a batch grows while messages keep coming
            # (a gap under batch_gap_s), up to batch_wait_s; a lone message goes at once.
            remaining = min(deadline - loop.time(), self.batch_gap_s)
            if remaining <= 0:
                return
            try:
                async with asyncio.timeout(remaining):  # not wait_for: no task of its own
                    batch.append(await self.intake.get())
            except TimeoutError:
                return

    async def _process(self, batch: list[Delivery]) -> None:
        try:
            prepared = await self.pipeline.parse(batch)
        except Exception:  # the parse worker died: handed back; the loop parses till a new one
            log.warning("parsing a batch failed; the sources get the messages back",
                        exc_info=True)
            return
        try:
            await self.pipeline.commit(prepared, batch)
        except AfterCommit:  # a bug in the metrics: logged, and the batch stands
            log.exception("after a batch's commit")
        except Exception:  # the store cannot write: nothing was acknowledged
            await self._store_failed("batch not committed")
            return
        self.store_ok = True
        self._backoff = 0.25
        self._last_activity = asyncio.get_running_loop().time()
        for relay in self.relays:
            relay.wake.set()

    async def _store_failed(self, what: str) -> None:
        """Logged with the exception being handled; the batch's deliveries were handed back
        (nacked, answered 40): the sources deliver them again, after a growing pause."""
        self.store_ok = False
        log.exception("%s; the sources get the messages back", what)
        await asyncio.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, 5.0)

    async def _caught_up(self) -> bool:
        for relay in self.relays:
            if not await relay.caught_up():
                return False
        return True

    async def _until_idle(self, stop: asyncio.Event, idle_s: float) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            quiet = loop.time() - max(
                [self._last_activity]
                + [s.last_message_at for s in self.sources if s.last_message_at is not None]
            )
            idle = quiet >= idle_s and self.intake.empty() and not self._busy
            if idle and await self._caught_up():
                log.info("idle for %.1f s and every sink has everything: stopping", idle_s)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    async def _shutdown(
        self, batcher: asyncio.Task[None], relays: list[asyncio.Task[None]]
    ) -> None:
        """Stop taking input, decide and acknowledge what was delivered, let sinks catch up."""
        self._stopping = True
        for source in self.sources:
            with contextlib.suppress(Exception):
                await source.stop_consuming()
        while (not self.intake.empty() or self._busy) and not batcher.done():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        batcher.cancel()
        for relay in self.relays:
            relay.wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wait_caught_up(), 10)
        for task in relays:
            task.cancel()
        await asyncio.gather(batcher, *relays, return_exceptions=True)
        for source in self.sources:
            with contextlib.suppress(Exception):
                await source.close()
        for close in self.closers:
            with contextlib.suppress(Exception):
                await close()
        self.pipeline.quarantine_log.flush()

    async def _wait_caught_up(self) -> None:
        while not await self._caught_up():  # noqa: ASYNC110 - the store is polled, not signalled
            await asyncio.sleep(0.05)
