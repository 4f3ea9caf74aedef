"""Replay: message files through the pipeline into the store, relayed to one sink."""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Sequence

from gateway.correlate import DEFAULT_PAIR_WINDOW_HOURS, DEFAULT_TOLERANCE_S
from gateway.decide import Prepared
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline, Relay, ResultHook
from gateway.ports import Sink, Store
from gateway.tally import Tally

Progress = Callable[[int], None]
DEFAULT_PAIR_WINDOW_S = int(DEFAULT_PAIR_WINDOW_HOURS * 3600)


async def replay(
    batches: AsyncIterable[Sequence[Prepared]],
    store: Store,
    sink: Sink,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    progress: Progress | None = None,
    metrics: Metrics | None = None,
    pair_window_s: int = DEFAULT_PAIR_WINDOW_S,
    close_windows: bool = False,
) -> Tally:
    """Decide every prepared batch, commit it, then relay what it emitted. Returns the counts.

    Files need no acknowledgement, so batches arrive already prepared (parsed), possibly by
    a worker process while this one decides and commits the batch before.
    """
    tally = Tally()
    hooks: list[ResultHook] = [lambda _b, r: tally.add(r)]
    if metrics is not None:
        hooks.append(metrics.observe)
    pipeline = Pipeline(store, None, tolerance_s, hooks=hooks)
    clock = 0  # the stream's own time: the newest Dannelsestidspunkt seen

    async def close(now: int) -> None:
        outcomes = await store.close_pairs(now, pair_window_s)
        tally.add_pairs(outcomes)
        if metrics is not None:
            metrics.pairs_closed(outcomes)

    relay = Relay(store, sink, feed="replay")
    await relay.start()
    await relay.drain()  # what an earlier, interrupted run committed but did not relay
    try:
        async for batch in batches:
            await pipeline.commit(batch)
            clock = max(clock, stream_time(batch))
            await close(clock)
            await relay.drain()
            if progress is not None:
                progress(tally.messages)
    finally:  # an interrupted replay, too, says how many were not logged one by one
        pipeline.quarantine_log.flush()
    if close_windows:  # as if every pairing window had passed
        await close(2**62)
    await store.set_feed(relay.name, "replay-done")  # the outbox need no longer be kept for it
    return tally


def stream_time(batch: Sequence[Prepared]) -> int:
    """The newest Dannelsestidspunkt in the batch. Refused messages do not move the clock:
    the time they were read (today) would close every pairing window of an old capture."""
    times = [p.event.formed_at for p in batch
             if p.event is not None and p.event.formed_at is not None]
    return int(max(times).timestamp()) if times else 0  # aware times: compared as instants
