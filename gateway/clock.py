"""The live service's pairing clock: the Dannelsestidspunkt of what is arriving now.

An event's pairing window is counted in Dannelsestidspunkt time (its twin's lag is the
difference of the two), so it may be closed only once the stream has passed its end. Live,
the stream is normally seconds behind the wall clock; draining a backlog after an outage it
is days behind, and a wall-clock close would judge every event of the backlog "one version
only" while its twin waits a few messages further on. Each source (a 2.2 and a 3.0 mailbox)
drains its own backlog, at its own pace: the stream has passed a moment only once every
source has. Replay keeps its own clock, the newest Dannelsestidspunkt seen
(`gateway.replay.stream_time`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final

from gateway.decide import Prepared, Result

# A source that has delivered nothing for this long has no backlog: it no longer holds the
# clock back (a mailbox switched off would otherwise hold it for ever).
IDLE_AFTER_S: Final = 300.0


class LiveClock:
    """Wall time less the largest delay (received minus formed, never negative) among the
    sources active in the last IDLE_AFTER_S, each source's delay being that of its freshest
    message in its last batch."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._sources: dict[str, tuple[float, float]] = {}  # source -> (delay, seen at)

    def observe(self, batch: Sequence[Prepared], results: Sequence[Result]) -> None:
        freshest: dict[str, float] = {}
        for p in batch:
            if p.event is not None and p.event.formed_at is not None:
                delay = (p.raw.received_at - p.event.formed_at).total_seconds()
                freshest[p.raw.source] = min(delay, freshest.get(p.raw.source, delay))
        seen = self._wall()
        for source, delay in freshest.items():
            self._sources[source] = (max(delay, 0.0), seen)

    @property
    def delay_s(self) -> float:
        active = self._wall() - IDLE_AFTER_S
        return max((delay for delay, seen in self._sources.values() if seen >= active),
                   default=0.0)

    def now(self) -> int:
        return int(self._wall() - self.delay_s)
