"""Group commit without idle waiting: a batch takes what is queued, grows while messages keep
coming less than batch_gap apart, and ends at a longer gap; what comes after stays queued."""

from __future__ import annotations

import asyncio

from gateway.pipeline import Pipeline
from gateway.ports import Delivery
from gateway.service import Service
from tests.fakes import MemoryStore


def test_a_batch_grows_while_messages_keep_coming_and_leaves_the_late_one_queued() -> None:
    async def scenario() -> tuple[list[str], list[str], float]:
        intake: asyncio.Queue[Delivery] = asyncio.Queue()
        service = Service(Pipeline(MemoryStore()), intake, [], [], batch_size=100,
                          batch_wait_s=2.0, batch_gap_s=0.1)

        async def arrive() -> None:
            for name in ("b", "c", "d"):
                await asyncio.sleep(0.02)  # well within the gap
                intake.put_nowait(name)  # type: ignore[arg-type]
            await asyncio.sleep(0.5)  # past the gap: the next batch's
            intake.put_nowait("late")  # type: ignore[arg-type]

        loop = asyncio.get_running_loop()
        intake.put_nowait("a")  # type: ignore[arg-type]
        arriving = asyncio.create_task(arrive())
        batch = [await intake.get()]
        started = loop.time()
        await service._fill(batch)
        took = loop.time() - started
        await arriving
        left = [intake.get_nowait() for _ in range(intake.qsize())]
        return batch, left, took  # type: ignore[return-value]

    batch, left, took = asyncio.run(scenario())
    assert batch == ["a", "b", "c", "d"]
    assert left == ["late"]  # not lost with the timeout that ended the batch
    assert took < 0.45, "the batch ended at the first gap, not at batch_wait"
