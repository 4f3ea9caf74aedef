"""A bug in deciding one message must not hold up the others.

Until stop 18 an exception while deciding a batch failed the whole batch; live, its messages
went back to the broker and came again, failed again, and no message behind them was ever
decided (and `/readyz` said the store could not write).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from adapters.sqlite import Store
from gateway import pipeline as pipeline_module
from gateway.correlate import CorrelationState, Effects
from gateway.decide import Prepared, Result, decide_batch, prepare
from gateway.envelope import EnvelopeReader
from gateway.model import Outcome, Reason
from gateway.pipeline import AfterCommit, Pipeline, ResultHook
from gateway.ports import Delivery
from gateway.service import Service
from tests import helpers as h
from tests.fakes import MemoryStore
from tests.test_backpressure import Item, Settler

BUG = "AES-2022-0009999"  # a case number the correlation (with a bug) cannot take


def buggy(batch: Sequence[Prepared], state: CorrelationState,
          tolerance_s: int) -> tuple[list[Result], Effects]:
    """decide_batch with a bug: it fails on any batch holding one particular message."""
    if any(p.event is not None and p.event.case_number == BUG for p in batch):
        raise KeyError("the bug")
    return decide_batch(batch, state, tolerance_s)


BODIES = [
    h.v22_inline(h.record(sagsid="0000001001")),
    h.v30_inline(h.v30_xml(number=BUG, legacy=None, cpr="0102031234", ref=str(uuid.uuid4())),
                 envelope_cpr="0102031234"),
    h.v30_inline(h.v30_xml(number="AES-2022-0000002", legacy="1002", ref=str(uuid.uuid4()))),
    h.v22_inline(h.record(sagsid="0000001001")),  # a resend of the first
]


async def decided(store_path: Path) -> tuple[list[Result], bytes]:
    reader = EnvelopeReader()
    batch = [prepare(h.raw(body), reader) for body in BODIES]
    async with await Store.open(store_path) as store:
        results = await Pipeline(store).commit(batch)
        quarantined = await store.quarantine_after(0, 10)
    return results, quarantined[0].body if quarantined else b""


def test_the_message_deciding_fails_on_is_quarantined_and_the_rest_decided(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    healthy, _ = asyncio.run(decided(tmp_path / "healthy.db"))
    monkeypatch.setattr(pipeline_module, "decide_batch", buggy)
    results, kept = asyncio.run(decided(tmp_path / "buggy.db"))

    assert [r.outcome for r in results] == [Outcome.EMITTED, Outcome.QUARANTINED,
                                            Outcome.EMITTED, Outcome.DUPLICATE]
    assert results[1].reason is Reason.INTERNAL_ERROR
    assert results[1].detail == "deciding: KeyError: 'the bug'"
    assert kept == BODIES[1], "kept whole, for quarantine replay after a fix"
    others = [(r.outcome, r.event_id, r.duplicate_kind) for i, r in enumerate(results) if i != 1]
    assert others == [(r.outcome, r.event_id, r.duplicate_kind)
                      for i, r in enumerate(healthy) if i != 1]
    assert "deciding them one at a time" in caplog.text


def test_live_the_batch_is_settled_and_the_body_kept_though_the_worker_sent_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A parsed message crosses from the parse worker without its body; the quarantine takes
    it from the delivery. Every delivery is settled (acked), none handed back."""
    from gateway.envelope import DEFAULT_MAX_BYTES
    from gateway.formats import DEFAULT_BESKEDTYPES
    from gateway.workers import ParsePool
    from tests.test_workers import Handed, RecordingSettler, until_ready

    monkeypatch.setattr(pipeline_module, "decide_batch", buggy)
    settler = RecordingSettler()
    deliveries = [Handed(h.raw(body), settler) for body in BODIES]

    async def scenario() -> tuple[list[Result], bytes]:
        pool = ParsePool(1, DEFAULT_BESKEDTYPES, DEFAULT_MAX_BYTES, min_batch=1)
        store = await Store.open(tmp_path / "g.db")
        try:
            pool.start()
            await until_ready(pool)
            results = await Pipeline(store, parse_pool=pool).process(
                deliveries)  # type: ignore[arg-type]
            return results, (await store.quarantine_after(0, 10))[0].body
        finally:
            pool.close()
            await store.close()

    results, kept = asyncio.run(scenario())
    assert [r.reason for r in results] == [None, Reason.INTERNAL_ERROR, None, None]
    assert kept == BODIES[1]
    assert (len(settler.settled), settler.failed) == (4, [])


def test_replay_keeps_the_body_though_the_worker_sent_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Replay's batches come from a parse worker without their bodies, and have no delivery
    to take one from: until stop 20 the quarantine kept an empty body, and `quarantine
    replay` after a fix found nothing to decide. The file is read again."""
    from gateway.cli import run_replay

    monkeypatch.setattr(pipeline_module, "decide_batch", buggy)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for number, body in enumerate(BODIES):
        (inbox / f"{number:04}.xml").write_bytes(body)

    async def scenario() -> tuple[dict[str, object], bytes]:
        summary = await run_replay([inbox], tmp_path / "r.db", str(tmp_path / "out.jsonl"),
                                   workers=1)
        async with await Store.open(tmp_path / "r.db") as store:
            return summary, (await store.quarantine_after(0, 10))[0].body

    summary, kept = asyncio.run(scenario())
    assert summary["quarantined_by_reason"] == {"internal_error": 1}
    assert kept == BODIES[1]


def test_a_failing_result_hook_is_not_taken_for_a_failed_commit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """The hooks (the metrics, a replay's summary) run after the commit and the
    acknowledgements. Their bug reached the live service as if the commit had failed: it
    logged "batch not committed", said the store could not write (/readyz 503) and paused.
    Now it is raised as AfterCommit, the batch committed; the service logs it and goes on."""

    def counting_bug(batch: Sequence[Prepared], results: Sequence[Result]) -> None:
        raise ZeroDivisionError("a bug in counting")

    async def committed(name: str, hooks: list[ResultHook]) -> tuple[list[Outcome], int]:
        reader = EnvelopeReader()
        batch = [prepare(h.raw(body), reader) for body in BODIES]
        async with await Store.open(tmp_path / name) as store:
            try:
                outcomes = [r.outcome for r in await Pipeline(store, hooks=hooks).commit(batch)]
            except AfterCommit:
                outcomes = []
            return outcomes, len(await store.outbox_after(0, 10))

    healthy_outcomes, healthy_outbox = asyncio.run(committed("healthy.db", []))
    assert healthy_outcomes.count(Outcome.EMITTED) == 3
    assert asyncio.run(committed("s.db", [counting_bug])) == ([], healthy_outbox), (
        "raised as AfterCommit, and committed all the same")

    async def live() -> tuple[bool, int]:
        settler = Settler()
        intake: asyncio.Queue[Delivery] = asyncio.Queue()
        service = Service(Pipeline(MemoryStore(), hooks=[counting_bug]), intake, [], [])
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        for _ in range(3):
            intake.put_nowait(Item(settler))  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
        ok = service.store_ok
        stop.set()
        await asyncio.wait_for(task, 10)
        return ok, settler.settled

    assert asyncio.run(live()) == (True, 3)
    assert "batch not committed" not in caplog.text
    assert "after a batch's commit" in caplog.text
