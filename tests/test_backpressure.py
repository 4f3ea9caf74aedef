"""Backpressure, not loss: a sink too far behind holds the intake back until it catches up."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.decide import Result
from gateway.model import RawMessage
from gateway.pipeline import Pipeline, Relay
from gateway.ports import Delivery, OutboxRow
from gateway.service import Service
from tests.fakes import MemoryStore
from tests.helpers import raw


class Settler:
    def __init__(self) -> None:
        self.settled = 0
        self.failed = 0

    async def settle(self, deliveries: Sequence[Delivery], results: Sequence[Result]) -> None:
        self.settled += len(deliveries)

    async def fail(self, deliveries: Sequence[Delivery]) -> None:
        self.failed += len(deliveries)


class Item:
    def __init__(self, settler: Settler) -> None:
        self.raw: RawMessage = raw(b"<x/>")
        self.settler = settler


class Sink:
    name = "slow"

    async def send(self, rows: Sequence[OutboxRow]) -> None:
        return None


def running(
    store: MemoryStore,
) -> tuple[Service, Relay, asyncio.Queue[Delivery], asyncio.Event, asyncio.Task[None]]:
    """A service running with one relay that never sends and holds the intake back past a
    backlog of 10 events."""
    relay = Relay(store, Sink(), max_backlog=10)  # type: ignore[arg-type]
    intake: asyncio.Queue[Delivery] = asyncio.Queue()
    service = Service(Pipeline(store), intake, [], [relay])  # type: ignore[arg-type]
    relay.run = lambda *a, **k: asyncio.sleep(3600)  # type: ignore[method-assign]
    stop = asyncio.Event()
    return service, relay, intake, stop, asyncio.create_task(service.run(stop))


def test_a_lagging_sink_throttles_the_intake_until_it_catches_up() -> None:
    async def scenario() -> tuple[int, int, bool, int]:
        store, settler = MemoryStore(outbox_len=100), Settler()
        service, relay, intake, stop, task = running(store)
        for _ in range(5):
            intake.put_nowait(Item(settler))  # type: ignore[arg-type]
        await asyncio.sleep(0.5)
        held_back, throttled = store.commits, service.throttled
        relay.position = 95  # the sink catches up to within its bound
        await asyncio.sleep(0.5)
        stop.set()
        await task
        return held_back, store.commits, throttled, settler.settled

    held_back, commits, throttled, settled = asyncio.run(scenario())
    assert held_back == 0
    assert throttled
    assert commits >= 1
    assert settled == 5


def test_a_stop_while_throttled_decides_what_was_delivered_without_waiting_for_the_sink() -> None:
    """Found by bench/soak.py --mqtt-down: with the MQTT broker gone and the intake throttled,
    SIGTERM never ended the gateway (a service manager kills it after its timeout)."""

    async def scenario() -> tuple[int, int, bool]:
        store, settler = MemoryStore(outbox_len=100), Settler()
        service, relay, intake, stop, task = running(store)
        for _ in range(5):
            intake.put_nowait(Item(settler))  # type: ignore[arg-type]
        await asyncio.sleep(0.5)
        throttled = service.throttled
        stop.set()
        await asyncio.sleep(1.0)  # the sink is as far behind as it was
        settled_while_behind = settler.settled
        relay.position = 100  # so that the stop need not wait its 10 s for the sink
        await asyncio.wait_for(task, 10)
        return settled_while_behind, store.commits, throttled

    settled, commits, throttled = asyncio.run(scenario())
    assert throttled
    assert settled == 5, "decided and acknowledged at the stop, the sink still behind"
    assert commits >= 1


class FlakyStore(MemoryStore):
    """The backlog cannot be read once (a read of the store failing: an I/O error)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def outbox_end(self) -> int:
        self.reads += 1
        if self.reads == 1:
            raise OSError("disk I/O error")
        return 0


def test_a_failed_read_of_the_backlog_hands_the_batch_back_and_goes_on() -> None:
    """A failure before the batch was decided ended the batcher's task: nothing noticed it,
    and no message was decided again until a restart, the deliveries held unacknowledged."""

    async def scenario() -> tuple[int, int, bool, bool]:
        store, settler = FlakyStore(), Settler()
        service, _, intake, stop, task = running(store)
        intake.put_nowait(Item(settler))  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        store_ok_after_failure = service.store_ok
        await asyncio.sleep(1.0)  # its pause after a failure
        for _ in range(3):
            intake.put_nowait(Item(settler))  # type: ignore[arg-type]
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(task, 10)
        return settler.failed, settler.settled, store_ok_after_failure, service.store_ok

    failed, settled, ok_after_failure, ok_at_end = asyncio.run(scenario())
    assert failed == 1, "handed back to its source, which delivers it again"
    assert settled == 3, "the batcher goes on"
    assert not ok_after_failure
    assert ok_at_end


def test_a_batcher_ended_by_a_bug_stops_the_gateway_instead_of_leaving_it_idle() -> None:
    async def scenario() -> BaseException | None:
        store, settler = MemoryStore(), Settler()
        intake: asyncio.Queue[Delivery] = asyncio.Queue()
        service = Service(Pipeline(store), intake, [], [])

        async def bug(batch: list[Delivery]) -> None:
            raise RuntimeError("a bug after the commit")

        service._process = bug  # type: ignore[method-assign]
        task = asyncio.create_task(service.run(asyncio.Event()))
        for _ in range(3):
            intake.put_nowait(Item(settler))  # type: ignore[arg-type]
        try:
            await asyncio.wait_for(task, 5)
        except RuntimeError as error:
            return error
        return None

    error = asyncio.run(scenario())
    assert isinstance(error, RuntimeError), "the run ends with the bug, not idle for ever"
