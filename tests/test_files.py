"""The JSON Lines sink: appends, rotates by size, loses no line across files."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from adapters.files import FileDelivery, JsonlSink
from gateway.ports import OutboxRow


def rows(start: int, count: int) -> list[OutboxRow]:
    return [OutboxRow(seq, f"id-{seq}", "101", "case_change", "reported",
                      b'{"event_id":"id-%d"}' % seq) for seq in range(start, start + count)]


def test_rotation_by_size_keeps_every_line_once_in_order(tmp_path: Path) -> None:
    sink = JsonlSink(str(tmp_path / "canonical.jsonl"), rotate_bytes=200)
    sink.open(truncate=True)
    for start in range(0, 60, 10):
        asyncio.run(sink.send(rows(start, 10)))
    sink.close()
    files = [*sorted(tmp_path.glob("canonical.*.jsonl")), tmp_path / "canonical.jsonl"]
    assert len(files) > 2
    lines = [line for f in files for line in f.read_text().splitlines()]
    assert lines == [f'{{"event_id":"id-{i}"}}' for i in range(60)]
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)


def test_reopening_appends(tmp_path: Path) -> None:
    for start in (0, 5):
        sink = JsonlSink(str(tmp_path / "out.jsonl"))
        sink.open(truncate=False)
        asyncio.run(sink.send(rows(start, 5)))
        sink.close()
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 10


@pytest.mark.parametrize("size", [0, 1, 256 * 1024 - 1, 256 * 1024, 256 * 1024 + 1, 3_000_000])
def test_files_are_read_whole_whatever_their_size(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "m.xml").write_bytes(data)
    assert FileDelivery(tmp_path / "m.xml").raw.body == data
