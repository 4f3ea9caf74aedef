"""Replay rate, memory and start-up with a big store: does the gateway keep its pace as it grows?

    .venv/bin/python bench/scale.py [--events 5000000] [--messages 100000] [--workdir DIR]

1. Simulates transition traffic and picks 100 000 messages to measure: half are the 3.0 twins
   of events whose 2.2 message is already in the store ("prefill"), half are new events.
2. Fills a store with --events synthetic events (cases of five events, old-only, new-only and
   migrated ones with their links, one message row per version), written straight into SQLite
   in key order, then replays the prefill into it through the real pipeline.
3. Replays the measured messages with `aes-gateway replay` (a process of its own) into
   (a) an empty store, (b) a store holding only the prefill (the reference for the outcomes),
   (c) the full store; prints each rate, the process's peak RSS, and checks that the outcomes
   of (b) and (c) are the same: millions of unrelated events change no decision.
4. Prints the store's size on disk per million events, the time and memory of `aes-gateway
   backup` of the full store, and the start-up time of
   `aes-gateway run` with the full store (process start to the first 200 from /readyz; needs
   the RabbitMQ on this machine).

The synthetic store is kept in --workdir and reused while its marker says it has --events.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.sqlite import Store  # noqa: E402 - after the path is set
from gateway.model import Version  # noqa: E402
from gateway.simulate import Message, simulate  # noqa: E402

CLI = [str(ROOT / ".venv" / "bin" / "aes-gateway")]
EVENTS_PER_CASE = 5
EVENT_TYPES = ("reported", "recognised", "rejected", "compensation_decided", "case_closed")


# --- the measured messages ------------------------------------------------------------------


def pick_messages(count: int, seed: int) -> tuple[list[Message], list[Message]]:
    """(prefill, measured): for half of the measured, the 2.2 twin goes into the store first."""
    cases = int(count * 0.27) + 100  # about 1.9 twins and 2.4 single events a case
    sim = simulate(cases, seed, bad_share=0.0, scenarios=False)
    by_event: dict[int, dict[Version, Message]] = {}
    order: list[int] = []
    for message in sim.messages:
        if message.event is None or message.redelivery or message.version is None:
            continue
        versions = by_event.setdefault(id(message.event), {})
        if not versions:
            order.append(id(message.event))
        versions.setdefault(message.version, message)
    twins = [by_event[e] for e in order if len(by_event[e]) == 2]
    prefill = [pair[Version.V2_2] for pair in twins[: count // 2]]
    measured = [pair[Version.V3_0] for pair in twins[: count // 2]]
    used = {id(m.event) for m in prefill}
    singles = [m for e in order if e not in used for m in by_event[e].values()]
    measured += singles[: count - len(measured)]
    if len(measured) < count:
        raise SystemExit(f"the simulation gave only {len(measured)} messages; raise its size")
    measured.sort(key=lambda m: m.arrival)
    prefill.sort(key=lambda m: m.arrival)
    return prefill, measured


def write_messages(directory: Path, messages: list[Message]) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for index, message in enumerate(messages):
        (directory / f"{index:07d}.xml").write_bytes(message.body)


# --- the synthetic store --------------------------------------------------------------------


def _uuid(n: int, salt: int) -> str:
    return str(uuid.UUID(int=(salt << 96) | n))  # in key order as n grows


def synthetic_rows(events: int, seed: int, now: int) -> Iterator[tuple[list[tuple[object, ...]],
                                                                        list[tuple[object, ...]],
                                                                        list[tuple[object, ...]]]]:
    """(events, messages, links) in chunks, each table in its key order."""
    rng = random.Random(seed)
    start = now - 300 * 86400  # all within the retention period
    step = 300 * 86400 / max(events, 1)
    chunk = 100_000
    for base in range(0, events, chunk):
        event_rows, message_rows, link_rows = [], [], []
        for i in range(base, min(base + chunk, events)):
            case, position = divmod(i, EVENTS_PER_CASE)
            kind = case % 4  # 0 old only, 1 new only, 2-3 migrated (both ids, linked)
            legacy = f"{1_000_000_000 + case:010d}" if kind != 1 else None
            number = f"AES-2021-{case:07d}" if kind != 0 else None
            day = case % 28 + 1
            cpr = f"{day:02d}{case % 12 + 1:02d}{case % 100:02d}9{case % 1000:03d}"  # 9: unused
            versions = (1, 2, 3, 3)[kind]
            first_version = "3.0" if versions == 2 else "2.2"
            seen = int(start + i * step)
            other = seen + rng.randrange(1, 7200) if versions == 3 else None
            event_id = _uuid(i, 0xE)
            event_rows.append((
                event_id, EVENT_TYPES[position], seen - 3600, None, legacy, number, cpr,
                versions, first_version, _uuid(i, 0xF) if versions != 1 else None, seen,
                other, f"{101 + case % 800:03d}", seen, 1,
            ))
            for v, label in ((1, "2.2"), (2, "3.0")):
                if versions & v:
                    outcome = "emitted" if label == first_version else "duplicate"
                    message_rows.append((_uuid(i * 2 + v - 1, 0xA), outcome, event_id, label,
                                         seen))
            if kind >= 2 and position == 0:
                link_rows.append((legacy, number, cpr, "tidligere_sagsid", seen))
        yield event_rows, message_rows, link_rows


def fill(path: Path, events: int, seed: int) -> float:
    """A store with `events` synthetic events, written straight into SQLite. Returns seconds."""
    started = time.perf_counter()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)

    async def create() -> None:
        store = await Store.open(path)
        await store.close()

    asyncio.run(create())
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    indexes = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'"
                           " AND tbl_name = 'events' AND sql IS NOT NULL").fetchall()
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    columns = ("event_id, event_type, occurred_at, occurred_alt, legacy_case_id, case_number,"
               " cpr, versions, first_version, event_ref, first_seen, other_seen,"
               " municipality_code, accepted_at, pair_closed")
    now = int(time.time())
    filled = 0
    for event_rows, message_rows, link_rows in synthetic_rows(events, seed, now):
        conn.execute("BEGIN")
        conn.executemany(f"INSERT INTO events ({columns}) VALUES ({','.join('?' * 15)})",
                         event_rows)
        conn.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?)", message_rows)
        conn.executemany("INSERT INTO links VALUES (?, ?, ?, ?, ?)", link_rows)
        conn.execute("COMMIT")
        filled += len(event_rows)
        print(f"\r  {filled} of {events} events written", end="", file=sys.stderr)
    for _, sql in indexes:
        conn.execute(sql)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("ANALYZE")
    conn.close()
    print(file=sys.stderr)
    return time.perf_counter() - started


# --- measuring ------------------------------------------------------------------------------


def replay(inbox: Path, store: Path, out: Path) -> dict[str, object]:
    """`aes-gateway replay` as its own process: wall time, peak RSS, its summary."""
    summary = out.with_suffix(".summary.json")
    env = {**os.environ, "AES_GATEWAY_LOG_LEVEL": "ERROR"}
    started = time.perf_counter()
    proc = subprocess.Popen([*CLI, "replay", str(inbox), "--store", str(store),
                             "--output", str(out), "--summary", str(summary)], env=env)
    peaks = high_water_until_done(proc)  # the process's and its parse worker's
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"replay into {store} failed: exit {proc.returncode}")
    workers = [kb for pid, kb in peaks.items() if pid != proc.pid]
    return {"seconds": elapsed, "peak_rss_mb": peaks.get(proc.pid, 0) / 1024,
            "worker_rss_mb": max(workers, default=0) / 1024,
            "summary": json.loads(summary.read_text())}


def high_water_until_done(proc: subprocess.Popen[bytes]) -> dict[int, int]:
    """Polls `proc` until it ends: the peak RSS in KB of it and of each of its children, by
    pid, each read from the process's own high-water mark. getrusage's ru_maxrss would count
    this script's pages, resident in the fork before the exec (a backup of 42 MB showed as
    1 049 MB that way at stop 21)."""
    peaks: dict[int, int] = {}
    while proc.poll() is None:
        for pid in [proc.pid, *children(proc.pid)]:
            peaks[pid] = max(peaks.get(pid, 0), _high_water_kb(pid))
        time.sleep(0.02)
    return peaks


def children(pid: int) -> list[int]:
    """The processes `pid` started (its parse worker), from every thread of it."""
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return [int(c) for t in tasks for c in (t / "children").read_text().split()]
    except OSError:
        return []


def _high_water_kb(pid: int) -> int:
    """VmHWM: the peak resident set of the process since it started (exec resets it; the
    resident pages of a fork before its exec would count in getrusage's ru_maxrss)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def startup(store: Path, workdir: Path) -> float:
    """Seconds from starting `aes-gateway run` on `store` to its first 200 from /readyz."""
    import aio_pika  # the start-up check needs a mailbox to consume

    queue = f"scale-{uuid.uuid4().hex[:8]}"

    async def declare(delete: bool) -> None:
        connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
        async with connection:
            channel = await connection.channel()
            if delete:
                await channel.queue_delete(queue)
            else:
                await channel.declare_queue(queue, durable=True)

    asyncio.run(declare(False))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = workdir / "startup.toml"
    config.write_text(f"""
[store]
path = "{store}"
[[sources]]
type = "amqp"
url = "amqp://guest:guest@127.0.0.1:5672/"
queue = "{queue}"
[[sinks]]
type = "jsonl"
path = "{workdir / 'startup.jsonl'}"
[http]
listen = "127.0.0.1:{port}"
""")
    env = {**os.environ, "AES_GATEWAY_LOG_LEVEL": "ERROR"}
    started = time.perf_counter()
    proc = subprocess.Popen([*CLI, "run", "--config", str(config)], env=env)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - started
            except OSError:
                pass
            if proc.poll() is not None:
                raise SystemExit("aes-gateway run exited during start-up")
            time.sleep(0.01)
    finally:
        proc.terminate()
        proc.wait()
        asyncio.run(declare(True))


def purge_seconds(path: Path) -> float:
    """How long the hourly retention purge holds the store's write lock (nothing is due)."""

    async def purge() -> float:
        store = await Store.open(path)
        started = time.perf_counter()
        await store.purge(400, 90)
        elapsed = time.perf_counter() - started
        await store.close()
        return elapsed

    return asyncio.run(purge())


def backup_figures(path: Path, workdir: Path) -> tuple[float, int, int]:
    """`aes-gateway backup` of the store, as an operator's timer runs it (a process of its
    own): wall seconds, its peak RSS in KB, bytes written. The copy is deleted afterwards."""
    target = workdir / "backup"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    summary = workdir / "backup.json"
    started = time.perf_counter()
    with summary.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "backup", str(target),
                                    "--store", str(path)], cwd=ROOT, stdout=out)
    peak = high_water_until_done(process).get(process.pid, 0)
    seconds = time.perf_counter() - started
    shutil.rmtree(target)
    if process.returncode != 0:
        raise SystemExit("aes-gateway backup failed")
    return seconds, peak, int(json.loads(summary.read_text())["bytes"])


def decisions(summary: dict[str, object]) -> dict[str, object]:
    """What the replay decided, without the whole-store overlap counts."""
    return {k: v for k, v in summary.items() if k not in ("overlap", "pair_outcomes")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out" / "scale")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)

    prefill, measured = pick_messages(args.messages, args.seed)
    write_messages(work / "prefill", prefill)
    write_messages(work / "measured", measured)
    print(f"measured messages     {len(measured)} ({len(prefill)} of them twins of stored "
          f"events)")

    template = work / "synthetic.db"
    marker = work / f"synthetic-{args.events}-{args.seed}"
    if not marker.exists():
        for old in work.glob("synthetic-*"):
            old.unlink()
        seconds = fill(template, args.events, args.seed)
        marker.touch()
        print(f"synthetic store       {args.events} events written in {seconds:.0f} s")

    stores = {name: work / f"{name}.db" for name in ("empty", "prefill", "full")}
    for path in stores.values():
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(template, stores["full"])
    for name in ("prefill", "full"):
        replay(work / "prefill", stores[name], work / f"{name}-prefill.jsonl")

    results = {}
    for name in ("empty", "prefill", "full"):
        results[name] = replay(work / "measured", stores[name], work / f"{name}.jsonl")
        r = results[name]
        print(f"replay into {name:9} {len(measured) / r['seconds']:8.0f} msg/s  "  # type: ignore[operator]
              f"({r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB, "
              f"parse worker {r['worker_rss_mb']:.0f} MB)")
    size = sum(p.stat().st_size for p in (stores["full"], Path(f"{stores['full']}-wal"))
               if p.exists())
    with sqlite3.connect(stores["full"]) as conn:
        events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    print(f"full store            {size / 1e6:.0f} MB for {events} events = "
          f"{size / 1e6 / (events / 1e6):.0f} MB per million events")
    ratio = results["empty"]["seconds"] / results["full"]["seconds"]  # type: ignore[operator]
    print(f"full / empty rate     {ratio:.2f}")
    same = decisions(results["prefill"]["summary"]) == decisions(results["full"]["summary"])  # type: ignore[arg-type]
    print(f"full-store decisions  {'equal the prefill-only store' if same else 'DIFFER'}")
    print(f"retention purge, full {purge_seconds(stores['full']):.2f} s (the write lock held)")
    seconds, rss_kb, size = backup_figures(stores["full"], work)
    print(f"backup, full store    {seconds:.2f} s for {size / 1e6:.0f} MB, quick_check included,"
          f" peak RSS {rss_kb / 1024:.0f} MB")
    print(f"start-up, full store  {startup(stores['full'], work):.2f} s")
    print(f"start-up, empty store {startup(stores['empty'], work):.2f} s")


if __name__ == "__main__":
    main()
