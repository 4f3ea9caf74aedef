"""The core's view of the outside world: sources, sinks and the store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import msgspec

from gateway.correlate import CorrelationState, Effects
from gateway.decide import BatchKeys, Prepared, Result
from gateway.model import RawMessage


class OutboxRow(msgspec.Struct, frozen=True, gc=False):
    """One canonical event waiting in the outbox, with what sinks route by."""

    seq: int
    event_id: str
    municipality_code: str | None
    category: str
    event_type: str
    body: bytes


class Delivery(Protocol):
    """A message from a source; settled by its settler only after its outcome is committed."""

    @property
    def raw(self) -> RawMessage: ...

    @property
    def settler(self) -> Settler: ...


@runtime_checkable
class Rereadable(Protocol):
    """A prepared batch that can give its messages' bodies again: one parsed in a worker
    process crossed without them (workers.pack), and a quarantine must keep a body whole."""

    def raws(self) -> list[RawMessage]:
        """The batch's messages, bodies and all, in its order."""


class Settler(Protocol):
    """Acknowledges a source's deliveries, a batch at a time (e.g. one multiple-ack)."""

    async def settle(self, deliveries: Sequence[Delivery], results: Sequence[Result]) -> None:
        """The outcomes are committed: acknowledge."""

    async def fail(self, deliveries: Sequence[Delivery]) -> None:
        """The outcomes could not be committed: hand the messages back (nack, HTTP 40)."""


class Sink(Protocol):
    name: str

    async def send(self, rows: Sequence[OutboxRow]) -> None:
        """Deliver the rows in order; return only when the sink has them."""


class Store(Protocol):
    async def load_state(self, keys: BatchKeys) -> CorrelationState: ...

    async def commit(
        self, batch: Sequence[Prepared], results: Sequence[Result], effects: Effects
    ) -> None: ...

    async def sink_progress(self, sink: str) -> int | None: ...

    async def register_sink(self, sink: str, start: int = 0, feed: str = "outbox") -> None: ...

    async def set_feed(self, sink: str, feed: str) -> None: ...

    async def outbox_after(self, seq: int, limit: int) -> list[OutboxRow]: ...

    async def mark_sent(self, sink: str, seq: int) -> None: ...

    async def outbox_end(self) -> int: ...

    async def close_pairs(self, now: int, window_s: int) -> dict[str, int]: ...
