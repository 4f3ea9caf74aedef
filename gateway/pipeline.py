"""Async orchestration over the ports: receive -> decide -> commit -> settle -> relay."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from gateway.decide import Prepared, Result, batch_keys, decide_batch, prepare
from gateway.envelope import EnvelopeReader
from gateway.model import Outcome
from gateway.ports import Delivery, Sink, Store

log = logging.getLogger("aes_gateway.pipeline")

ResultHook = Callable[[Sequence[Prepared], Sequence[Result]], None]


class Pipeline:
    """Decides batches of deliveries; settles each only after the batch is committed."""

    def __init__(
        self,
        store: Store,
        reader: EnvelopeReader | None = None,
        tolerance_s: int = 120,
        hooks: Sequence[ResultHook] = (),
    ) -> None:
        self.store = store
        self.reader = reader or EnvelopeReader()
        self.tolerance_s = tolerance_s
        self.hooks = list(hooks)
        self.committed = asyncio.Event()

    def prepare(self, deliveries: Sequence[Delivery]) -> list[Prepared]:
        return [prepare(d.raw, self.reader) for d in deliveries]

    async def process(self, deliveries: Sequence[Delivery]) -> list[Result]:
        return await self.commit(self.prepare(deliveries), deliveries)

    async def commit(
        self, batch: Sequence[Prepared], deliveries: Sequence[Delivery] = ()
    ) -> list[Result]:
        """Decide and commit a prepared batch, then settle its deliveries (if it has any)."""
        state = await self.store.load_state(batch_keys(batch))
        results, effects = decide_batch(batch, state, self.tolerance_s)
        await self.store.commit(batch, results, effects)
        for delivery, result in zip(deliveries, results, strict=False):
            await delivery.settle(result)
        for hook in self.hooks:
            hook(batch, results)
        _log_outcomes(batch, results)
        self.committed.set()
        return results


def _log_outcomes(batch: Sequence[Prepared], results: Sequence[Result]) -> None:
    for item, result in zip(batch, results, strict=True):
        if result.outcome is Outcome.QUARANTINED:
            log.warning(
                "message quarantined",
                extra={"message_key": result.key, "reason": result.reason,
                       "detail": result.detail, "source": item.raw.source},
            )
        elif log.isEnabledFor(logging.DEBUG):
            log.debug(
                "message decided",
                extra={"message_key": result.key, "outcome": result.outcome,
                       "event_id": result.event_id, "kind": result.duplicate_kind},
            )


class Relay:
    """Feeds one sink from the outbox, in order, remembering its progress in the store."""

    def __init__(self, store: Store, sink: Sink, batch_size: int = 1000) -> None:
        self.store = store
        self.sink = sink
        self.batch_size = batch_size
        self.position = 0

    async def start(self, from_end: int | None = None) -> bool:
        """Load progress; a new sink starts at `from_end` (or the beginning). True if new."""
        known = await self.store.sink_progress(self.sink.name)
        if known is not None:
            self.position = known
            return False
        self.position = from_end or 0
        await self.store.register_sink(self.sink.name, self.position)
        return True

    async def pump(self) -> int:
        """Relay one chunk; returns how many rows went out."""
        rows = await self.store.outbox_after(self.position, self.batch_size)
        if not rows:
            return 0
        await self.sink.send(rows)
        self.position = rows[-1].seq
        await self.store.mark_sent(self.sink.name, self.position)
        return len(rows)

    async def drain(self) -> int:
        total = 0
        while (sent := await self.pump()) > 0:
            total += sent
        return total
