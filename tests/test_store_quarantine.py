"""The quarantine is read a page at a time, and a page of raw messages is bounded in bytes.

A page of 500 rows (256 for the quarantine exchange's relay) of oversized messages, each kept
up to 16 MiB, was up to 4-8 GB in memory at once until stop 24.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import adapters.sqlite
from adapters.sqlite import QuarantineRow, Store
from gateway.decide import prepare
from gateway.envelope import EnvelopeReader
from gateway.pipeline import Pipeline
from tests import helpers as h

BODY = 6_000  # bytes of each bad message
PAGE = 10_000  # QUARANTINE_PAGE_BYTES for these tests: the first row, and one more of 6 000


async def quarantined(path: Path, sizes: list[int]) -> Store:
    """A store holding one malformed message of each size (and a 14-byte head), quarantined
    in this order."""
    reader = EnvelopeReader()
    bodies = [b"<broken n='%02d'" % n + b" " * size for n, size in enumerate(sizes)]
    store = await Store.open(path)
    await Pipeline(store).commit([prepare(h.raw(body), reader) for body in bodies])
    return store


def ids(rows: list[QuarantineRow]) -> list[int]:
    return [row.seq for row in rows]


@pytest.fixture(autouse=True)
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapters.sqlite, "QUARANTINE_PAGE_BYTES", PAGE, raising=False)


def test_the_relay_reads_the_first_row_and_then_no_more_than_the_page_bytes(
    tmp_path: Path,
) -> None:
    async def run() -> tuple[list[int], list[int], list[int], list[int]]:
        async with await quarantined(tmp_path / "q.db", [BODY] * 7) as store:
            every = ids(await store.quarantine_after(0, 1000 * PAGE))
            first = ids(await store.quarantine_after(0, 256))
            second = ids(await store.quarantine_after(first[-1], 256))
            one = ids(await store.quarantine_after(0, 1))
        return every, first, second, one

    every, first, second, one = asyncio.run(run())
    assert len(every) == 2  # the limit in rows is not what bounds it
    assert first == every
    assert second == [first[-1] + 1, first[-1] + 2]
    assert one == first[:1]


def test_a_row_bigger_than_a_page_comes_whole(tmp_path: Path) -> None:
    async def run() -> list[list[QuarantineRow]]:
        async with await quarantined(tmp_path / "q.db", [3 * PAGE, 100, 3 * PAGE]) as store:
            return [page async for page in store.quarantined_pages()]

    pages = asyncio.run(run())
    assert [len(page) for page in pages] == [2, 1]  # the first row, and the small one after it
    assert [len(row.body) for page in pages for row in page] == [
        3 * PAGE + 14, 100 + 14, 3 * PAGE + 14]


def test_every_page_together_is_the_whole_quarantine_in_order(tmp_path: Path) -> None:
    async def run() -> tuple[list[list[QuarantineRow]], list[list[QuarantineRow]]]:
        async with await quarantined(tmp_path / "q.db", [BODY] * 7) as store:
            with_bodies = [page async for page in store.quarantined_pages()]
            without = [page async for page in store.quarantined_pages(with_body=False)]
        return with_bodies, without

    with_bodies, without = asyncio.run(run())
    assert [len(page) for page in with_bodies] == [2, 2, 2, 1]
    assert [row.seq for page in with_bodies for row in page] == list(range(1, 8))
    assert all(len(row.body) == BODY + 14 for page in with_bodies for row in page)
    assert [len(page) for page in without] == [7]  # no bodies: only the row limit counts
