"""The live pairing clock follows the stream: after an outage, a backlog formed days ago is
paired as it arrives, not judged "one version only" by the wall clock."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import msgspec

from adapters.sqlite import Store
from gateway.clock import LiveClock
from gateway.decide import Prepared, batch_keys, decide_batch, prepare
from gateway.envelope import EnvelopeReader
from tests import helpers as h

FORMED = dt.datetime(2022, 3, 1, 9, 17, 3, tzinfo=dt.UTC)  # the helpers' Dannelsestidspunkt
WALL = 1_900_000_000.0
WINDOW_S = 72 * 3600


def arriving(body: bytes, after: dt.timedelta) -> Prepared:
    return prepare(h.raw(body, FORMED + after), EnvelopeReader())


def test_the_clock_is_wall_time_less_the_freshest_delay_of_a_source() -> None:
    clock = LiveClock(lambda: WALL)
    assert clock.now() == int(WALL)
    body = h.v22_inline(h.record())
    clock.observe([arriving(body, dt.timedelta(days=4))], [])
    assert clock.now() == int(WALL) - 4 * 86400
    clock.observe([arriving(body, dt.timedelta(days=4)), arriving(body, dt.timedelta(seconds=2))],
                  [])
    assert clock.now() == int(WALL) - 2
    clock.observe([prepare(h.raw(b"<not xml"), EnvelopeReader())], [])  # no time: no change
    assert clock.now() == int(WALL) - 2
    clock.observe([arriving(body, -dt.timedelta(minutes=10))], [])  # a sender's clock ahead
    assert clock.now() == int(WALL)


def test_the_slowest_active_source_holds_the_clock() -> None:
    """A 3.0 mailbox caught up while the 2.2 one still drains a four-day backlog: the 3.0
    events' twins are still to come from the 2.2 backlog. A source idle for five minutes has
    no backlog and no longer counts."""
    wall = [WALL]
    clock = LiveClock(lambda: wall[0])
    backlog = from_source("amqp:2.2", arriving(h.v22_inline(h.record()), dt.timedelta(days=4)))
    live = from_source("amqp:3.0", arriving(h.v30_inline(h.v30_xml()), dt.timedelta(seconds=3)))
    clock.observe([backlog, live], [])
    assert clock.now() == int(WALL) - 4 * 86400
    wall[0] += 301
    clock.observe([live], [])
    assert clock.now() == int(WALL) + 301 - 3


def from_source(source: str, item: Prepared) -> Prepared:
    return msgspec.structs.replace(item, raw=msgspec.structs.replace(item.raw, source=source))


def test_a_backlog_four_days_old_is_paired_as_it_arrives(tmp_path: Path) -> None:
    """Both versions of one event, formed four days ago (beyond the 72 h window), arrive one
    minute apart while a backlog drains; the minute's close comes in between."""
    now = FORMED + dt.timedelta(days=4)
    old = arriving(h.v22_inline(h.record()), dt.timedelta(days=4))
    new = arriving(h.v30_inline(h.v30_xml()), dt.timedelta(days=4, minutes=1))

    async def judged(close_at: list[int]) -> dict[str, int]:
        async with await Store.open(tmp_path / f"{len(close_at)}-{close_at[0]}.db") as store:
            outcomes = {"both": 0, "only_2_2": 0, "only_3_0": 0}
            for item, at in zip((old, new), close_at, strict=True):
                state = await store.load_state(batch_keys([item]))
                results, effects = decide_batch([item], state, 120)
                await store.commit([item], results, effects)
                for name, count in (await store.close_pairs(at, WINDOW_S)).items():
                    outcomes[name] += count
            final = await store.close_pairs(2**62, WINDOW_S)
            return {name: outcomes[name] + final[name] for name in outcomes}

    clock = LiveClock(lambda: now.timestamp())
    stream = []
    for item in (old, new):
        clock.observe([item], [])
        stream.append(clock.now())
    wall = [int(now.timestamp()), int(now.timestamp()) + 60]
    assert asyncio.run(judged(stream)) == {"both": 1, "only_2_2": 0, "only_3_0": 0}
    assert asyncio.run(judged(wall)) == {"both": 0, "only_2_2": 1, "only_3_0": 0}  # before
