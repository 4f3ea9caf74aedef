"""The live service's pairing clock: the Dannelsestidspunkt of what is arriving now.

An event's pairing window is counted in Dannelsestidspunkt time (its twin's lag is the
difference of the two), so it may be closed only once the stream has passed its end. Live,
the stream is normally seconds behind the wall clock; draining a backlog after an outage it
is days behind, and a wall-clock close would judge every event of the backlog "one version
only" while its twin waits a few messages further on. Replay keeps its own clock, the newest
Dannelsestidspunkt seen (`gateway.replay.stream_time`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from gateway.decide import Prepared, Result


class LiveClock:
    """Wall time minus the delay of the freshest message of the last batch (received minus
    formed, never negative). Idle, it goes on with the wall clock at the last delay."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self.delay_s = 0.0

    def observe(self, batch: Sequence[Prepared], results: Sequence[Result]) -> None:
        delays = [(p.raw.received_at - p.event.formed_at).total_seconds() for p in batch
                  if p.event is not None and p.event.formed_at is not None]
        if delays:
            self.delay_s = max(min(delays), 0.0)

    def now(self) -> int:
        return int(self._wall() - self.delay_s)
