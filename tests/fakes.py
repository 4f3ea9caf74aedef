"""An in-memory fake of the store port, for the core's tests (never a fake broker)."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.correlate import CorrelationState, Effects
from gateway.decide import BatchKeys, Prepared, Result
from gateway.ports import OutboxRow


class MemoryStore:
    """Commits nothing but counts; an outbox `outbox_len` events long that is never read."""

    def __init__(self, outbox_len: int = 0) -> None:
        self.commits = 0
        self.outbox_len = outbox_len

    async def load_state(self, keys: BatchKeys) -> CorrelationState:
        return CorrelationState()

    async def commit(
        self, batch: Sequence[Prepared], results: Sequence[Result], effects: Effects
    ) -> None:
        self.commits += 1

    async def sink_progress(self, sink: str) -> int | None:
        return 0

    async def register_sink(self, sink: str, start: int = 0, feed: str = "outbox") -> None:
        return None

    async def set_feed(self, sink: str, feed: str) -> None:
        return None

    async def outbox_after(self, seq: int, limit: int) -> list[OutboxRow]:
        return []

    async def mark_sent(self, sink: str, seq: int) -> None:
        return None

    async def outbox_end(self) -> int:
        return self.outbox_len

    async def close_pairs(self, now: int, window_s: int) -> dict[str, int]:
        return {}


class BrokenStore(MemoryStore):
    """A store whose disk is gone: every commit fails."""

    async def commit(
        self, batch: Sequence[Prepared], results: Sequence[Result], effects: Effects
    ) -> None:
        raise OSError("disk I/O error")
