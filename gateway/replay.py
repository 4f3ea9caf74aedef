"""Replay: message files through the pipeline into the store, relayed to one sink."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from gateway.envelope import EnvelopeReader
from gateway.pipeline import Pipeline, Relay
from gateway.ports import Delivery, Sink, Store
from gateway.tally import Tally

Progress = Callable[[int], None]


async def replay(
    batches: Iterable[Sequence[Delivery]],
    store: Store,
    sink: Sink,
    tolerance_s: int = 120,
    progress: Progress | None = None,
    reader: EnvelopeReader | None = None,
) -> Tally:
    """Decide every batch, commit it, then relay what it emitted. Returns the counts."""
    tally = Tally()
    pipeline = Pipeline(store, reader, tolerance_s, hooks=[lambda _b, r: tally.add(r)])
    relay = Relay(store, sink)
    await relay.start()
    await relay.drain()  # what an earlier, interrupted run committed but did not relay
    for batch in batches:
        await pipeline.process(batch)
        await relay.drain()
        if progress is not None:
            progress(tally.messages)
    return tally
