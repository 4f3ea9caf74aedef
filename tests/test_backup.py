"""`aes-gateway backup`: a consistent, private, single-file copy of a store, also of one that a
running replay (or gateway) is writing; a restored copy goes on as the store itself would."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from adapters.jsonl import ROTATED_STAMP
from adapters.sqlite_backup import STAMP, delete_replaced
from tests.conftest import CLI, ROOT, run_cli
from tests.faults import small_disk
from tests.helpers import push_to_jsonl

OUTCOMES = "SELECT message_key, outcome, event_id FROM messages ORDER BY message_key"


def rows(store: Path, query: str) -> list[tuple[object, ...]]:
    reader = sqlite3.connect(f"{store.absolute().as_uri()}?mode=ro", uri=True)
    try:
        return reader.execute(query).fetchall()
    finally:
        reader.close()


def messages_in(store: Path) -> int:
    try:
        return int(rows(store, "SELECT COUNT(*) FROM messages")[0][0])  # type: ignore[call-overload]
    except sqlite3.Error:  # not created yet
        return 0


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory,
             simulated: tuple[Path, dict[str, object]]) -> Path:
    """A store holding the simulated capture, replayed once for the tests that copy it."""
    store = tmp_path_factory.mktemp("replayed") / "s.db"
    run_cli("replay", str(simulated[0]), "--store", str(store), "--output", os.devnull)
    assert not Path(f"{store}-wal").exists(), "closed: the file alone is the store"
    return store


def a_store(replayed: Path, path: Path) -> Path:
    """A copy of the replayed store at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(replayed, path)
    path.chmod(0o600)
    return path


def test_a_backup_taken_mid_replay_goes_on_to_the_same_store(
    tmp_path: Path, simulated: tuple[Path, dict[str, object]],
) -> None:
    """Taken while a replay commits a message at a time, the backup holds a whole number of
    its commits: replaying the whole capture into it gives every message the outcome and
    event id that the uninterrupted store gave it."""
    inbox, key = simulated
    total = int(key["messages"])  # type: ignore[call-overload]
    store, copy = tmp_path / "live.db", tmp_path / "backups" / "copy.db"
    copy.parent.mkdir()
    env = {**os.environ, "AES_GATEWAY_LOG_LEVEL": "ERROR"}
    replay = subprocess.Popen(
        [*CLI, "replay", str(inbox), "--store", str(store), "--batch-size", "1",
         "--workers", "0", "--output", str(tmp_path / "live.jsonl")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while messages_in(store) < total // 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        taken = run_cli("backup", str(copy), "--store", str(store))
    finally:
        _, errors = replay.communicate(timeout=300)
    assert replay.returncode == 0, errors

    copied = messages_in(copy)
    assert 0 < copied < total, "taken while the replay was writing"
    assert f'"events": {len(rows(copy, "SELECT 1 FROM events"))}' in taken.stdout
    assert copy.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in copy.parent.iterdir()) == ["copy.db"], "one file, no WAL"
    assert rows(copy, "PRAGMA integrity_check") == [("ok",)]

    run_cli("replay", str(inbox), "--store", str(copy), "--output", str(tmp_path / "on.jsonl"))
    assert messages_in(copy) > copied, "the rest decided into the copy"
    assert rows(copy, OUTCOMES) == rows(store, OUTCOMES)


def test_a_backup_never_overwrites_and_leaves_nothing_half_written(
    tmp_path: Path, replayed: Path,
) -> None:
    store = a_store(replayed, tmp_path / "s.db")
    earlier = tmp_path / "earlier.db"
    earlier.write_bytes(b"yesterday's backup")
    stranger = tmp_path / "notes.txt"
    stranger.write_text("not a store")

    refused = [
        (run_cli("backup", str(earlier), "--store", str(store), check=False), "exists"),
        (run_cli("backup", str(tmp_path / "a.db"), "--store", str(tmp_path / "typo.db"),
                 check=False), "no store"),
        (run_cli("backup", str(tmp_path / "b.db"), "--store", str(stranger), check=False),
         "not an aes-gateway store"),
        (run_cli("backup", str(tmp_path / "no" / "c.db"), "--store", str(store), check=False),
         "no directory"),
    ]
    for result, why in refused:
        assert (result.returncode, why in result.stderr) == (2, True), result.stderr
    assert earlier.read_bytes() == b"yesterday's backup"
    assert stranger.read_text() == "not a store"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("s.db")) == [
        "earlier.db", "notes.txt"]


def test_a_backup_onto_a_full_disk_says_so_and_leaves_nothing(
    tmp_path: Path, replayed: Path,
) -> None:
    """The store is 2-3 MB; the backup's disk has 1 MB."""
    store = a_store(replayed, tmp_path / "s.db")
    with small_disk(tmp_path / "small", "1m") as disk:
        if disk is None:
            pytest.skip("cannot mount a tmpfs here (not root?)")
        result = run_cli("backup", str(disk / "copy.db"), "--store", str(store), check=False)
        left = sorted(p.name for p in disk.iterdir())
    assert result.returncode == 2, result.stderr
    assert "failed" in result.stderr
    assert "full" in result.stderr
    assert left == []


def test_restore_puts_the_backup_back_and_keeps_the_replaced_store(
    tmp_path: Path, simulated: tuple[Path, dict[str, object]],
) -> None:
    """The replaced store's WAL goes aside with it: left beside the restored file, SQLite
    would apply its frames to it. The gateway must be stopped: restore claims the store."""
    inbox, _ = simulated
    files = sorted(inbox.glob("*.xml"))
    first, rest = tmp_path / "first", tmp_path / "rest"
    for part, chosen in ((first, files[: len(files) // 2]), (rest, files[len(files) // 2:])):
        part.mkdir()
        for path in chosen:
            (part / path.name).write_bytes(path.read_bytes())
    store, copy = tmp_path / "s.db", tmp_path / "copy.db"
    run_cli("replay", str(first), "--store", str(store), "--output", os.devnull)
    run_cli("backup", str(copy), "--store", str(store))
    before = rows(store, OUTCOMES)

    # A store with data after the backup, its newest commits in its WAL: a gateway killed.
    later = subprocess.Popen(
        [*CLI, "replay", str(rest), "--store", str(store), "--output", os.devnull,
         "--batch-size", "20", "--workers", "0"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while messages_in(store) < len(before) + 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    later.kill()
    later.wait()
    assert Path(f"{store}-wal").stat().st_size > 0
    after = rows(store, OUTCOMES)
    assert len(after) > len(before)

    with (tmp_path / "s.db.lock").open("r+b") as held:  # a gateway running on the store
        import fcntl
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused = run_cli("restore", str(copy), "--store", str(store), check=False)
    assert refused.returncode == 2
    assert "in use by another aes-gateway" in refused.stderr
    assert rows(store, OUTCOMES) == after, "left as it was"

    restored = json.loads(run_cli("restore", str(copy), "--store", str(store)).stdout)
    assert rows(store, OUTCOMES) == before
    assert store.stat().st_mode & 0o777 == 0o600
    assert (restored["restored"], restored["from"]) == (str(store.absolute()),
                                                       str(copy.absolute()))
    assert restored["events"] > 0
    kept = Path(str(restored["replaced_store_kept_as"]))
    assert rows(kept, OUTCOMES) == after, "the replaced store, whole, with its WAL"
    assert not Path(f"{store}-wal").exists()

    reference = tmp_path / "reference.db"
    for part in (first, rest):
        run_cli("replay", str(part), "--store", str(reference), "--output", os.devnull)
    run_cli("replay", str(rest), "--store", str(store), "--output", os.devnull)
    assert rows(store, OUTCOMES) == rows(reference, OUTCOMES), "goes on as the original would"


def test_into_a_directory_named_by_time_keeping_the_newest(
    tmp_path: Path, replayed: Path,
) -> None:
    """From a timer: each backup named by the UTC time; `--keep N` deletes this store's older
    backups, and nothing else in the directory. Backups hold personal data too."""
    store, backups = a_store(replayed, tmp_path / "gateway.db"), tmp_path / "backups"
    backups.mkdir()
    older = ["gateway-20250101T000000Z.db", "gateway-20260101T000000Z.db"]
    others = ["gateway-notes.db", "other-20240101T000000Z.db", "notes.txt"]
    for name in (*older, *others):
        (backups / name).write_text(name)
    # named as a backup, and none: a directory and a symbolic link
    (backups / "gateway-20200101T000000Z.db").mkdir()
    (backups / "gateway-20210101T000000Z.db").symlink_to(backups / "notes.txt")
    others += ["gateway-20200101T000000Z.db", "gateway-20210101T000000Z.db"]

    made = json.loads(run_cli("backup", str(backups), "--store", str(store),
                              "--keep", "2").stdout)
    name = Path(str(made["backup"])).name
    assert re.fullmatch(r"gateway-\d{8}T\d{6}Z\.db", name)
    assert rows(backups / name, OUTCOMES) == rows(store, OUTCOMES)
    assert made["deleted"] == [str(backups / older[0])]
    assert sorted(p.name for p in backups.iterdir()) == sorted([older[1], name, *others])

    not_a_directory = run_cli("backup", str(tmp_path / "one.db"), "--store", str(store),
                              "--keep", "2", check=False)
    assert not_a_directory.returncode == 2
    assert "--keep needs a directory" in not_a_directory.stderr


def test_the_shipped_backup_unit_runs_and_verifies(tmp_path: Path, replayed: Path) -> None:
    """deploy/aes-gateway-backup.service's command, with this checkout and temporary paths in
    place of /opt, /var/lib and /var/backups; and systemd's own check of the units."""
    deploy = ROOT / "deploy"
    store, backups = a_store(replayed, tmp_path / "lib" / "gateway.db"), tmp_path / "backups"
    backups.mkdir()
    places = {"/opt/aes-gateway": str(ROOT), "/var/lib/aes-gateway": str(store.parent),
              "/var/backups/aes-gateway": str(backups)}
    units = tmp_path / "units"
    units.mkdir()
    for unit in ("aes-gateway.service", "aes-gateway-backup.service",
                 "aes-gateway-backup.timer"):
        text = (deploy / unit).read_text()
        for shipped, here in places.items():
            text = text.replace(shipped, here)
        (units / unit).write_text(text)
    command = next(line.removeprefix("ExecStart=").split()
                   for line in (units / "aes-gateway-backup.service").read_text().splitlines()
                   if line.startswith("ExecStart="))
    assert command[0] == str(ROOT / ".venv" / "bin" / "aes-gateway")
    subprocess.run([*CLI, *command[1:]], cwd=ROOT, check=True, capture_output=True)
    assert [p.suffix for p in backups.iterdir()] == [".db"]

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze on this machine to verify the units with")
    verified = subprocess.run([analyze, "verify", *map(str, sorted(units.iterdir()))],
                              capture_output=True, text=True, check=False)
    assert verified.returncode == 0, verified.stderr


def test_restore_refuses_an_empty_database(tmp_path: Path) -> None:
    """Put in the store's place, it would be taken for a new store: every id forgotten."""
    empty = tmp_path / "empty.db"
    with contextlib.closing(sqlite3.connect(empty)) as db:
        db.execute("PRAGMA user_version = 1")
    assert empty.stat().st_size > 0
    store = tmp_path / "s.db"
    store.write_bytes(b"")
    result = run_cli("restore", str(empty), "--store", str(store), check=False)
    assert result.returncode == 2
    assert "empty SQLite database" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db", "s.db"]


def test_restore_into_a_directory_that_is_not_there_says_so(
    tmp_path: Path, replayed: Path,
) -> None:
    result = run_cli("restore", str(replayed), "--store", str(tmp_path / "gone" / "s.db"),
                     check=False)
    assert result.returncode == 2
    assert "no directory" in result.stderr
    assert "for the store" in result.stderr


def test_metrics_for_the_textfile_collector(tmp_path: Path, replayed: Path) -> None:
    """Readable by node_exporter's user under the unit's UMask=0077; the figures match the
    backup; and a failed backup leaves the last success's figures as they were."""
    from prometheus_client.parser import text_string_to_metric_families

    store, prom = a_store(replayed, tmp_path / "s.db"), tmp_path / "aes-gateway-backup.prom"
    umask = os.umask(0o077)
    try:
        made = json.loads(run_cli("backup", str(tmp_path / "b.db"), "--store", str(store),
                                  "--metrics", str(prom)).stdout)
    finally:
        os.umask(umask)
    assert prom.stat().st_mode & 0o777 == 0o644
    figures = {sample.name: sample.value for family in text_string_to_metric_families(
        prom.read_text()) for sample in family.samples}
    assert figures["aes_gateway_backup_bytes"] == made["bytes"]
    assert figures["aes_gateway_backup_events"] == made["events"] > 0
    assert abs(figures["aes_gateway_backup_last_success_timestamp_seconds"] - time.time()) < 60
    written = prom.read_bytes()

    failed = run_cli("backup", str(tmp_path / "b.db"), "--store", str(store),
                     "--metrics", str(prom), check=False)  # b.db exists: refused
    assert failed.returncode == 2
    assert prom.read_bytes() == written
    assert sorted(p.name for p in tmp_path.iterdir() if ".prom" in p.name) == [prom.name]

    unwritable = tmp_path / "a-directory.prom"  # the metrics' path taken by a directory
    unwritable.mkdir()
    made_anyway = run_cli("backup", str(tmp_path / "c.db"), "--store", str(store),
                          "--metrics", str(unwritable), check=False)
    assert made_anyway.returncode == 2
    assert f"the backup {tmp_path / 'c.db'} was made, but its metrics" in made_anyway.stderr
    assert rows(tmp_path / "c.db", OUTCOMES) == rows(store, OUTCOMES)
    assert sorted(p.name for p in tmp_path.iterdir() if ".prom" in p.name) == [
        unwritable.name, prom.name]  # no temporary file left


def a_big_store(path: Path, megabytes: int = 300) -> Path:
    """A store big enough that copying it takes a moment: its tables, and a filler."""
    from adapters.sqlite import Store

    async def made() -> None:
        async with await Store.open(path):
            pass

    asyncio.run(made())
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE filler (b BLOB)")
        db.execute("INSERT INTO filler VALUES (randomblob(?))", (megabytes << 20,))
        db.commit()
    return path


def terminated_midway(args: list[str], partial_in: Path) -> subprocess.CompletedProcess[str]:
    """The command, sent SIGTERM once its temporary copy has appeared (the copy under way)."""
    process = subprocess.Popen([*CLI, *args], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(partial_in.glob(".*.partial")) and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def test_a_backup_stopped_by_sigterm_leaves_nothing_half_written(tmp_path: Path) -> None:
    """A timer's stop (or a shutdown) sends SIGTERM: until stop 20 it ended the command at
    once, and the temporary copy, as big as the store, stayed behind."""
    store = a_big_store(tmp_path / "big.db")
    backups = tmp_path / "backups"
    backups.mkdir()
    result = terminated_midway(["backup", str(backups), "--store", str(store)], backups)
    assert result.returncode == 143, result.stderr
    assert "interrupted: nothing half-written is left" in result.stderr
    left = list(backups.iterdir())
    assert [p.name for p in left if not p.name.startswith("big-")] == []
    for complete in left:  # the signal came after the copy was checked and named
        assert rows(complete, "PRAGMA integrity_check") == [("ok",)]


def test_a_restore_stopped_by_sigterm_leaves_a_whole_store(tmp_path: Path, replayed: Path) -> None:
    store = a_store(replayed, tmp_path / "lib" / "s.db")
    before = rows(store, OUTCOMES)
    backup = a_big_store(tmp_path / "big.db")
    result = terminated_midway(["restore", str(backup), "--store", str(store)], store.parent)
    assert result.returncode == 143, result.stderr
    assert "interrupted: the store is whole" in result.stderr
    assert not list(store.parent.glob(".*.partial"))
    assert rows(store, "PRAGMA integrity_check") == [("ok",)]
    filler = rows(store, "SELECT name FROM sqlite_master WHERE name = 'filler'")
    assert filler == [("filler",)] or rows(store, OUTCOMES) == before


def test_restore_refuses_a_backup_of_a_newer_gateway(tmp_path: Path, replayed: Path) -> None:
    """Put in place, it would be refused at every start of this gateway."""
    from adapters.sqlite_schema import SCHEMA_VERSION

    newer = a_store(replayed, tmp_path / "newer.db")
    with contextlib.closing(sqlite3.connect(newer)) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                   (str(SCHEMA_VERSION + 1),))
        db.commit()
    store = a_store(replayed, tmp_path / "s.db")
    before = store.read_bytes()
    result = run_cli("restore", str(newer), "--store", str(store), check=False)
    assert result.returncode == 2
    assert "written by a newer aes-gateway" in result.stderr
    assert store.read_bytes() == before
    assert not list(tmp_path.glob("s.db.replaced-*"))


def days_ago(days: float, stamp: str) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).strftime(stamp)


def test_replaced_stores_are_deleted_by_the_time_in_their_names_and_nothing_else(
    tmp_path: Path, replayed: Path,
) -> None:
    """Until stop 23 a replaced store was kept for ever, with the personal data it holds."""
    store = a_store(replayed, tmp_path / "s.db")
    restored = json.loads(run_cli("restore", str(replayed), "--store", str(store)).stdout)
    made = Path(str(restored["replaced_store_kept_as"])).name
    old = f"s.db.replaced-{days_ago(401, STAMP)}"
    recent = f"s.db.replaced-{days_ago(399, STAMP)}"
    others = [f"t.db.replaced-{days_ago(500, STAMP)}", f"s.db.replaced-{days_ago(500, STAMP)}.x",
              "s.db.replaced-20200101", "s.db.old"]
    for name in [old, f"{old}-wal", f"{old}-shm", recent, *others]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / f"s.db.replaced-{days_ago(600, STAMP)}").mkdir()
    others.append(f"s.db.replaced-{days_ago(600, STAMP)}")
    before = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    assert delete_replaced(store, before) == [old, f"{old}-shm", f"{old}-wal"]
    left = {p.name for p in tmp_path.iterdir()}
    assert {recent, made, *others} <= left
    assert old not in left

    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    assert made in delete_replaced(store, later), "the name restore gives is the one read"


def test_the_running_gateway_deletes_what_is_past_retention_beside_the_store_and_sinks(
    tmp_path: Path,
) -> None:
    """The hourly purge (first at start-up): a replaced store `retention_days` after the
    restore, a rotated JSON Lines file its `keep_days` after its rotation."""
    gone = [f"g.db.replaced-{days_ago(401, STAMP)}", f"g.db.replaced-{days_ago(401, STAMP)}-wal",
            f"out.{days_ago(401, ROTATED_STAMP)}.jsonl"]
    kept = [f"g.db.replaced-{days_ago(399, STAMP)}", f"out.{days_ago(399, ROTATED_STAMP)}.jsonl"]
    for name in gone + kept:
        (tmp_path / name).write_bytes(b"")
    config = tmp_path / "gateway.toml"
    config.write_text(push_to_jsonl(tmp_path, 0))
    result = run_cli("run", "--config", str(config), "--until-idle", "2", env_level="INFO")
    left = {p.name for p in tmp_path.iterdir()}
    assert set(kept) <= left
    assert not set(gone) & left
    said = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert [line["msg"] for line in said if "past retention" in line["msg"]] == [
        "replaced store past retention deleted", "rotated files past retention deleted"]
