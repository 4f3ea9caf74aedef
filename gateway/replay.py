"""Replay: message files through the pipeline into the store, relayed to one sink."""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Sequence

from gateway.decide import Prepared
from gateway.pipeline import Pipeline, Relay
from gateway.ports import Sink, Store
from gateway.tally import Tally

Progress = Callable[[int], None]


async def replay(
    batches: AsyncIterable[Sequence[Prepared]],
    store: Store,
    sink: Sink,
    tolerance_s: int = 120,
    progress: Progress | None = None,
) -> Tally:
    """Decide every prepared batch, commit it, then relay what it emitted. Returns the counts.

    Files need no acknowledgement, so batches arrive already prepared (parsed), possibly by
    a worker process while this one decides and commits the batch before.
    """
    tally = Tally()
    pipeline = Pipeline(store, None, tolerance_s, hooks=[lambda _b, r: tally.add(r)])
    relay = Relay(store, sink)
    await relay.start()
    await relay.drain()  # what an earlier, interrupted run committed but did not relay
    async for batch in batches:
        await pipeline.commit(batch)
        await relay.drain()
        if progress is not None:
            progress(tally.messages)
    return tally
