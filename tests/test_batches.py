"""Replay batches: every file once, in file order, however the parsing is shared out."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from adapters.files import batch_bounds, prepared_batches
from tests import helpers as h


@pytest.mark.parametrize(("total", "size"), [(0, 10), (7, 1), (1000, 4000), (5000, 4000),
                                             (102_396, 4000), (102_396, 8000), (999, 7)])
def test_batches_cover_every_file_once_in_order(total: int, size: int) -> None:
    bounds = batch_bounds(total, size)
    assert [i for start, end in bounds for i in range(start, end)] == list(range(total))
    assert all(0 < end - start <= size for start, end in bounds)


def test_big_batches_ramp_up_and_down() -> None:
    sizes = [end - start for start, end in batch_bounds(102_396, 8000)]
    assert sizes[:4] == [500, 1000, 2000, 4000]
    assert sizes[-4:] == [4000, 2000, 1000, 500]
    assert max(sizes) == 8000


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_parsed_batches_come_in_file_order(tmp_path: Path, workers: int) -> None:
    """With workers, this process also parses batches while it would wait; the order of the
    messages must not change."""
    ids = [str(uuid.uuid4()) for _ in range(240)]
    paths = []
    for index, message_id in enumerate(ids):
        path = tmp_path / f"{index:04d}.xml"
        path.write_bytes(h.v22_inline(h.record(), message_id=message_id))
        paths.append(str(path))

    async def keys() -> list[str]:
        return [item.key async for batch in prepared_batches(paths, 8, 1 << 20, workers)
                for item in batch]

    assert asyncio.run(keys()) == ids


@pytest.mark.parametrize("workers", [0, 1])
def test_a_batch_holds_no_more_bytes_than_its_first_file_and_batch_bytes(
    tmp_path: Path, workers: int
) -> None:
    """Until stop 24 a replay batch was up to 8 000 files whatever their size: 100 files of
    15 MB (each refused as too large, and kept) took 1.5 GB of memory at once."""
    sizes = [5_000] * 9 + [50_000] + [5_000] * 14  # a big one in the middle of a batch
    ids = [str(uuid.uuid4()) for _ in sizes]
    paths = []
    for index, (message_id, size) in enumerate(zip(ids, sizes, strict=True)):
        path = tmp_path / f"{index:04d}.xml"
        body = h.v22_inline(h.record(), message_id=message_id)
        path.write_bytes(body.replace(b"</", b" " * (size - len(body)) + b"</", 1))
        paths.append(str(path))

    async def batches() -> list[list[str]]:
        return [[item.key for item in batch]
                async for batch in prepared_batches(paths, 12, 1 << 20, workers, 12_000)]

    found = asyncio.run(batches())
    assert [key for batch in found for key in batch] == ids  # every file once, in order
    # a batch (12 files) stops once more than 12 000 bytes came after its first file, and
    # the files it left out come next, as batches of their own
    assert [len(batch) for batch in found] == [4, 4, 2, 2, 4, 4, 4]
