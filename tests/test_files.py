"""The JSON Lines sink: appends, rotates by size, loses no line across files or power loss."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import tracemalloc
from pathlib import Path

import pytest

from adapters.files import FileDelivery, list_inputs
from adapters.jsonl import ROTATED_STAMP, JsonlSink, delete_rotated
from gateway.pipeline import Relay
from gateway.ports import OutboxRow
from tests.fakes import MemoryStore


def rows(start: int, count: int) -> list[OutboxRow]:
    return [OutboxRow(seq, f"id-{seq}", "101", "case_change", "reported",
                      b'{"event_id":"id-%d"}' % seq) for seq in range(start, start + count)]


def write_rotating(path: Path, rotate_bytes: int, chunks: int) -> None:
    """`chunks` sends of 10 rows each to a new JSON Lines file at `path`."""
    sink = JsonlSink(str(path), rotate_bytes=rotate_bytes)
    sink.open(truncate=True)
    for start in range(0, chunks * 10, 10):
        asyncio.run(sink.send(rows(start, 10)))
    sink.close()


def test_rotation_by_size_keeps_every_line_once_in_order(tmp_path: Path) -> None:
    write_rotating(tmp_path / "canonical.jsonl", rotate_bytes=200, chunks=6)
    files = [*sorted(tmp_path.glob("canonical.*.jsonl")), tmp_path / "canonical.jsonl"]
    assert len(files) > 2
    lines = [line for f in files for line in f.read_text().splitlines()]
    assert lines == [f'{{"event_id":"id-{i}"}}' for i in range(60)]
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)


def test_a_configured_mode_holds_for_every_file_whatever_the_umask(tmp_path: Path) -> None:
    """A consumer's group reads the events: until stop 19 every file was made 0600, and an
    operator's `chmod 640` lasted until the next rotation."""
    existing = tmp_path / "canonical.jsonl"
    existing.write_text("")
    existing.chmod(0o600)
    umask = os.umask(0o077)  # systemd's UMask= in deploy/aes-gateway.service
    try:
        sink = JsonlSink(str(existing), rotate_bytes=200, mode=0o640)
        sink.open(truncate=False)
        for start in range(0, 60, 10):
            asyncio.run(sink.send(rows(start, 10)))
        sink.close()
    finally:
        os.umask(umask)
    files = [*sorted(tmp_path.glob("canonical.*.jsonl")), existing]
    assert len(files) > 2
    assert [f.stat().st_mode & 0o777 for f in files] == [0o640] * len(files)


def test_without_a_mode_an_existing_file_keeps_its_own(tmp_path: Path) -> None:
    existing = tmp_path / "out.jsonl"
    existing.write_text("")
    existing.chmod(0o640)
    sink = JsonlSink(str(existing))
    sink.open(truncate=False)
    sink.close()
    assert existing.stat().st_mode & 0o777 == 0o640


def test_rotated_files_are_deleted_by_the_time_in_their_names_and_nothing_else(
    tmp_path: Path,
) -> None:
    def rotated(name: str, days_ago: float) -> str:
        at = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)
        return f"{name}.{at.strftime(ROTATED_STAMP)}.jsonl"

    old, recent = rotated("canonical", 401), rotated("canonical", 399)
    others = ["canonical.jsonl", rotated("canonical.old", 500), rotated("other", 500),
              "canonical.20200101.jsonl", "canonical.backup.jsonl", old + ".gz"]
    for name in [old, recent, *others]:
        (tmp_path / name).write_text("{}\n")
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    assert delete_rotated(str(tmp_path / "canonical.jsonl"), cutoff) == [old]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([recent, *others])


def test_the_names_rotation_gives_are_the_names_the_purge_reads(tmp_path: Path) -> None:
    write_rotating(tmp_path / "canonical.jsonl", rotate_bytes=100, chunks=3)
    made = sorted(p.name for p in tmp_path.glob("canonical.*.jsonl"))
    assert len(made) == 2
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    assert delete_rotated(str(tmp_path / "canonical.jsonl"), later) == made
    assert [p.name for p in tmp_path.iterdir()] == ["canonical.jsonl"]


def test_reopening_appends(tmp_path: Path) -> None:
    for start in (0, 5):
        sink = JsonlSink(str(tmp_path / "out.jsonl"))
        sink.open(truncate=False)
        asyncio.run(sink.send(rows(start, 5)))
        sink.close()
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 10


@pytest.mark.parametrize("size", [0, 1, 256 * 1024 - 1, 256 * 1024, 256 * 1024 + 1, 3_000_000])
@pytest.mark.parametrize("limit", [1000, 3_000_000])
def test_files_up_to_16_mib_are_read_whole_over_the_limit_or_not(
    tmp_path: Path, size: int, limit: int
) -> None:
    """Whole, for `quarantine replay` to decide one refused as too large once the limit is
    raised."""
    data = os.urandom(size)
    (tmp_path / "m.xml").write_bytes(data)
    assert FileDelivery(tmp_path / "m.xml", max_bytes=limit).raw.body == data


@pytest.mark.parametrize(("limit", "kept"), [(1000, 16 * 2**20), (17 * 2**20, 17 * 2**20 + 1)])
def test_of_a_bigger_file_only_its_first_bytes_are_read(
    tmp_path: Path, limit: int, kept: int
) -> None:
    """A file of any size read whole cost its size in memory and in the quarantine (over 1 GB,
    SQLite's limit, it ended the replay)."""
    data = os.urandom(18 * 2**20)
    (tmp_path / "m.xml").write_bytes(data)
    assert FileDelivery(tmp_path / "m.xml", max_bytes=limit).raw.body == data[:kept]


@pytest.mark.parametrize("how", ["deleted", "renamed"])
def test_a_file_moved_or_deleted_underneath_is_begun_anew(tmp_path: Path, how: str) -> None:
    """logrotate (without copytruncate) or an operator takes the file away: the lines that
    follow go to a new file at the path, not to an inode no reader can find."""
    path = tmp_path / "canonical.jsonl"
    sink = JsonlSink(str(path))
    sink.open(truncate=True)
    asyncio.run(sink.send(rows(0, 5)))
    if how == "deleted":
        path.unlink()
    else:
        path.rename(tmp_path / "canonical.jsonl.1")
    asyncio.run(sink.send(rows(5, 5)))
    sink.close()
    assert path.read_text().splitlines() == [f'{{"event_id":"id-{i}"}}' for i in range(5, 10)]
    assert path.stat().st_mode & 0o777 == 0o600
    if how == "renamed":
        assert len((tmp_path / "canonical.jsonl.1").read_text().splitlines()) == 5


def test_lines_are_on_disk_before_the_relay_marks_them_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mark becomes durable with the store's next fsync; the lines must be there first,
    or a power loss keeps the mark and loses the lines."""
    path = tmp_path / "canonical.jsonl"
    steps: list[str] = []
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") == str(path):
            steps.append(f"synced {len(path.read_bytes().splitlines())} lines")
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)

    class Outbox(MemoryStore):
        async def outbox_after(self, seq: int, limit: int) -> list[OutboxRow]:
            return rows(seq + 1, min(limit, 25 - seq))

        async def mark_sent(self, sink: str, seq: int) -> None:
            steps.append(f"marked {seq}")

    sink = JsonlSink(str(path))
    sink.open(truncate=True)
    asyncio.run(Relay(Outbox(), sink, batch_size=10).drain())  # type: ignore[arg-type]
    sink.close()
    assert steps == ["synced 10 lines", "marked 10", "synced 20 lines", "marked 20",
                     "synced 25 lines", "marked 25"]


def test_inputs_are_listed_in_file_name_order_and_sliced_as_a_list(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    (inbox / "sub.xml").mkdir(parents=True)  # a folder, not a message
    names = [b"002.xml", b"010.xml", b"001.xml", b"b\xe6r.xml", b"ba.xml", b"note.txt"]
    for name in names:  # one not UTF-8 (Latin-1 "bær"), as on an old file share
        os.close(os.open(os.path.join(os.fsencode(inbox), name), os.O_CREAT | os.O_WRONLY))
    single = tmp_path / "z.xml"
    single.touch()
    files = list_inputs([inbox, single])
    expected = [os.path.join(inbox, os.fsdecode(n))
                for n in sorted(n for n in names if n.endswith(b".xml"))] + [str(single)]
    assert list(files) == expected
    assert len(files) == 6
    assert files[-1] == str(single)
    assert files[2:5] == expected[2:5]
    assert files[::2] == expected[::2]
    assert files[4:] == expected[4:]  # across the two inputs
    with pytest.raises(IndexError):
        files[6]


def test_a_directory_with_nothing_to_read_is_said_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Until stop 19 a replay of the capture's parent directory (its messages one level down)
    read nothing and said nothing: exit 0, an empty output."""
    capture = tmp_path / "capture"
    (capture / "in").mkdir(parents=True)
    (capture / "in" / "000001.xml").touch()
    (capture / "answer-key.json").touch()
    with caplog.at_level(logging.INFO, "aes_gateway.files"):
        assert len(list_inputs([capture])) == 0
        assert len(list_inputs([capture / "in"])) == 1
        (capture / "in" / "notes.txt").touch()
        assert len(list_inputs([capture / "in"])) == 1
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [
        ("WARNING", f"input directory {capture} holds no *.xml files: nothing is read from it "
                    "(2 other entries; subdirectories are not read)"),
        ("INFO", f"input directory {capture / 'in'}: 1 *.xml files read, 1 other entries "
                 "left out (subdirectories are not read)"),
    ]


def test_a_listing_keeps_about_twenty_bytes_a_file(tmp_path: Path) -> None:
    """A backlog may be millions of files: a list of path strings kept about 100 bytes a
    file (500 MB for five million)."""
    for index in range(20_000):
        os.close(os.open(tmp_path / f"{index:06d}.xml", os.O_CREAT | os.O_WRONLY, 0o600))
    tracemalloc.start()
    try:
        files = list_inputs([tmp_path])
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(files) == 20_000
    assert kept / len(files) < 30


def test_an_unfinished_last_line_is_cut_when_the_file_is_opened_to_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A process killed mid-write leaves half a line. Until stop 18 the next run appended its
    first line to it: one line no JSON reader can parse. The half line's chunk was never
    marked sent, so its event comes again, whole."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"event_id":"id-0"}\n{"event_id":"id-1"}\n{"event_id":"i')
    sink = JsonlSink(str(path))
    sink.open(truncate=False)
    asyncio.run(sink.send(rows(2, 3)))
    sink.close()
    assert path.read_text().splitlines() == [f'{{"event_id":"id-{i}"}}' for i in range(5)]
    assert "ended in an unfinished line (14 bytes" in caplog.text


def test_a_file_of_one_unfinished_line_is_emptied(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"event_id":' * 20000)  # no newline in 240 000 bytes: several blocks
    sink = JsonlSink(str(path))
    sink.open(truncate=False)
    sink.close()
    assert path.stat().st_size == 0


def test_a_disk_full_midway_leaves_whole_lines_and_going_on_finishes_them(
    tmp_path: Path,
) -> None:
    """The output's disk fills during a replay; space is freed; the same command goes on.
    Until stop 18 the half-written line stayed, and the next line was glued to it (2 lines of
    6 476 unreadable in a probe)."""
    from tests.conftest import read_jsonl, run_cli
    from tests.faults import small_disk

    run_cli("simulate", str(tmp_path / "in"), "--cases", "600", "--seed", "12")
    with small_disk(tmp_path / "disk", "3m") as disk:
        if disk is None:
            pytest.skip("cannot mount a tmpfs here (not root?)")
        (disk / "ballast").write_bytes(b"\0" * 2_000_000)
        replay = ["replay", str(tmp_path / "in"), "--store", str(tmp_path / "s.db"),
                  "--output", str(disk / "out.jsonl")]
        full = run_cli(*replay, check=False)
        assert full.returncode == 2
        assert "No space left on device" in full.stderr
        partial = (disk / "out.jsonl").read_bytes()
        assert partial
        assert partial.endswith(b"\n"), "whole lines only"
        (disk / "ballast").unlink()
        run_cli(*replay)
        ids = [event["event_id"] for event in read_jsonl(disk / "out.jsonl")]
    run_cli("replay", str(tmp_path / "in"), "--output", str(tmp_path / "fresh.jsonl"))
    assert len(partial.splitlines()) < len(ids) == len(set(ids))
    assert sorted(ids) == sorted(e["event_id"] for e in read_jsonl(tmp_path / "fresh.jsonl"))
