"""A sink that hangs instead of failing (RabbitMQ blocking publishers during a memory or disk
alarm) counts as stalled after `stall_after_s`, and no longer once it takes the events.

Until stop 15 only a failed send marked a sink stalled: a hanging one left `/readyz` at 200
for as long as it hung.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from gateway.pipeline import Relay
from gateway.ports import OutboxRow
from tests.fakes import MemoryStore


class OutboxStore(MemoryStore):
    """An outbox of `length` events, and the progress a relay marks."""

    def __init__(self, length: int) -> None:
        super().__init__(outbox_len=length)
        self.marked = 0

    async def outbox_after(self, seq: int, limit: int) -> list[OutboxRow]:
        last = min(seq + limit, self.outbox_len)
        return [OutboxRow(n, f"event-{n}", "101", "case_change", "reported", b"{}")
                for n in range(seq + 1, last + 1)]

    async def mark_sent(self, sink: str, seq: int) -> None:
        self.marked = seq


class BlockedSink:
    """Takes events only while `open` is set, as a blocked broker connection does."""

    name = "blocked"

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.taken = 0

    async def send(self, rows: Sequence[OutboxRow]) -> None:
        await self.open.wait()
        self.taken += len(rows)


def test_a_hanging_sink_is_stalled_until_it_takes_the_events() -> None:
    async def scenario() -> list[tuple[bool, int]]:
        store, sink = OutboxStore(25), BlockedSink()
        relay = Relay(store, sink, batch_size=10, stall_after_s=0.2)  # type: ignore[arg-type]
        running = asyncio.create_task(relay.run())
        seen = []
        for wait in (0.1, 0.3):  # before and after stall_after_s
            await asyncio.sleep(wait)
            seen.append((relay.stalled, store.marked))
        sink.open.set()
        await asyncio.sleep(0.1)
        seen.append((relay.stalled, store.marked))
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        return seen

    assert asyncio.run(scenario()) == [(False, 0), (True, 0), (False, 25)]


class FlakySink:
    """Fails its first `failures` sends, as a sink whose broker is away."""

    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.taken = 0

    async def send(self, rows: Sequence[OutboxRow]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker away")
        self.taken += len(rows)


def test_an_outage_of_a_sink_is_logged_as_it_begins_and_as_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before stop 18 each retry logged a warning with a traceback: every 2 s for as long as
    the sink was down."""
    async def scenario() -> int:
        store, sink = OutboxStore(25), FlakySink(failures=6)
        relay = Relay(store, sink, batch_size=10)  # type: ignore[arg-type]
        running = asyncio.create_task(relay.run(max_backoff_s=0.01))
        for _ in range(200):
            if store.marked == 25:
                break
            await asyncio.sleep(0.01)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        return store.marked

    caplog.set_level(logging.DEBUG, logger="aes_gateway.pipeline")
    assert asyncio.run(scenario()) == 25
    said = [(r.levelname, r.getMessage().split(";")[0].split(" after")[0])
            for r in caplog.records if r.name == "aes_gateway.pipeline"]
    assert said == [("WARNING", "sink flaky failed"), *[("DEBUG", "sink flaky failed again")] * 5,
                    ("INFO", "sink flaky takes events again")]
    assert caplog.records[0].exc_info is not None  # the first says why
    assert "(6 failed attempts)" in caplog.records[-1].getMessage()


class SlowSink:
    """Takes each chunk after `seconds`, or never (`seconds` None), as a sink mid-fsync or a
    broker that blocks."""

    name = "slow"

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.taken = 0

    async def send(self, rows: Sequence[OutboxRow]) -> None:
        await (asyncio.sleep(self.seconds) if self.seconds is not None else asyncio.Event().wait())
        self.taken += len(rows)


@pytest.mark.parametrize(("seconds", "marked"), [(0.2, 10), (None, 0)],
                         ids=["finishes", "hangs"])
def test_a_relay_stopped_mid_send_marks_a_chunk_that_arrives_and_gives_up_one_that_hangs(
    seconds: float | None, marked: int,
) -> None:
    """Until stop 18 a stop (Ctrl-C in a replay) during a send left the chunk sent but not
    marked: the next run sent it again (401 repeated lines of 7 294 in the CLI test)."""
    async def scenario() -> tuple[int, int, float]:
        store, sink = OutboxStore(25), SlowSink(seconds)
        relay = Relay(store, sink, batch_size=10)  # type: ignore[arg-type]
        draining = asyncio.create_task(relay.drain())
        await asyncio.sleep(0.05)  # the first chunk is on its way
        started = asyncio.get_running_loop().time()
        draining.cancel()
        await asyncio.gather(draining, return_exceptions=True)
        return store.marked, sink.taken, asyncio.get_running_loop().time() - started

    marked_at, taken, waited = asyncio.run(scenario())
    assert (marked_at, taken) == (marked, marked)
    assert waited < 2.5  # a hanging sink holds a stop up for at most FINISH_ON_STOP_S (2 s)


class Flapping:
    """A source whose connection the test turns on and off."""

    def __init__(self) -> None:
        self.name = "amqp:mailbox"
        self.connected = False


def test_an_outage_is_logged_again_every_remind_interval_while_it_lasts(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """The README's "every 10 minutes while it lasts", with the interval at 0.1 s: a source
    never seen connected is not reported; a lost one is, reminded while it stays lost, and
    its return is said with how long it lasted."""
    from gateway import pipeline
    from gateway.service import SourceWatch

    monkeypatch.setattr(pipeline, "REMIND_EVERY_S", 0.1)
    caplog.set_level(logging.INFO, logger="aes_gateway.service")

    async def scenario() -> None:
        source, watch = Flapping(), SourceWatch()
        watch.update([source])  # still connecting: its own retries are logged elsewhere
        source.connected = True
        watch.update([source])
        source.connected = False
        for _ in range(5):  # 0.25 s of outage, looked at every 0.05 s
            watch.update([source])
            await asyncio.sleep(0.05)
        source.connected = True
        watch.update([source])

    asyncio.run(scenario())
    said = [(r.levelname, r.getMessage().split(" after")[0].split(":")[1])
            for r in caplog.records]
    assert said[0] == ("WARNING", "mailbox disconnected")
    assert said[-1] == ("INFO", "mailbox connected again")
    # at least 0.2 s between the first look and the last: 2 reminders, more on a slow machine
    assert said[1:-1] == [("WARNING", "mailbox still disconnected")] * len(said[1:-1])
    assert 2 <= len(said[1:-1]) <= 4
