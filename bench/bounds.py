"""How far replay could get: the parse-only ceiling against replay with parts taken away.

    .venv/bin/python bench/bounds.py [--rounds 3] [--messages 100000]

Runs, by turns and each in a fresh process, over the files of `bench/replay.py`:
- `ceiling`: the parse-only pass of `bench/replay.py` (read each file, parse it with lxml);
- `parse side`: replay's reading and parsing (worker process and all), nothing after it;
- `no store`: that, and deciding every batch against state kept in memory, and encoding the
  canonical events; no SQLite at all (the store as if it cost nothing);
- `replay`: `aes-gateway replay`, as `bench/replay.py` measures it.

Prints each run's msg/s and CPU per message, then the medians and each median's ratio to the
ceiling's median. If `no store` misses a target, no change to the store can reach it; if
`parse side` misses it, nothing after the parse side can.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.files import list_inputs, prepared_batches  # noqa: E402
from bench.replay import parse_only, simulated_inbox  # noqa: E402
from gateway import canonical  # noqa: E402
from gateway.cli import parse_workers, run_replay  # noqa: E402
from gateway.cli_args import DEFAULT_BATCH  # noqa: E402
from gateway.correlate import DEFAULT_TOLERANCE_S, CorrelationState  # noqa: E402
from gateway.decide import Prepared, decide_batch  # noqa: E402
from gateway.envelope import DEFAULT_MAX_BYTES  # noqa: E402
from gateway.model import Outcome  # noqa: E402

MODES = ("ceiling", "parse side", "no store", "replay")


def cpu_seconds() -> float:
    """This process's CPU and that of its finished children (the parse worker)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def batches(files: list[str]) -> AsyncIterator[list[Prepared]]:
    """The files read and parsed as `aes-gateway replay` reads and parses them."""
    return prepared_batches(files, DEFAULT_BATCH, DEFAULT_MAX_BYTES, parse_workers(len(files)))


async def parse_side(files: list[str]) -> int:
    count = 0
    async for batch in batches(files):
        count += len(batch)
    return count


async def no_store(files: list[str]) -> int:
    """Decided as replay decides, against one state that holds everything seen. Returns how
    many messages it emitted as new events."""
    state, emitted = CorrelationState(), 0
    async for batch in batches(files):
        results, effects = decide_batch(batch, state, DEFAULT_TOLERANCE_S)
        for event in effects.output:
            canonical.encode(event)
        emitted += sum(result.outcome is Outcome.EMITTED for result in results)
    return emitted


Measured = tuple[float, float, int | None]  # seconds, CPU seconds, messages emitted


def measure(mode: str, inbox: Path, scratch: Path) -> Measured:
    """One mode, in this process. Modes that decide also say how many messages they emitted:
    the bound without a store must decide as replay does."""
    files = list_inputs([inbox])
    emitted: int | None = None
    if mode == "ceiling":
        paths = [Path(f) for f in files]
        parse_only(paths[:5000])  # as bench/replay.py: lxml and the page cache warm
        cpu, started = cpu_seconds(), time.perf_counter()
        parse_only(paths)
    else:
        cpu, started = cpu_seconds(), time.perf_counter()
        if mode == "parse side":
            asyncio.run(parse_side(files))
        elif mode == "no store":
            emitted = asyncio.run(no_store(files))
        else:
            summary = asyncio.run(run_replay(
                [inbox], scratch / "bounds.db", str(scratch / "out.jsonl"), close_windows=True))
            emitted = int(summary["emitted"])  # type: ignore[call-overload]
    return time.perf_counter() - started, cpu_seconds() - cpu, emitted


def run_mode(mode: str, inbox: Path, scratch: Path) -> Measured:
    """One mode in a fresh process: no heap or cache state carried from the one before."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    done = subprocess.run(
        [sys.executable, __file__, "--measure", mode, "--inbox", str(inbox),
         "--scratch", str(scratch)],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )
    wall, cpu, emitted = json.loads(done.stdout.splitlines()[-1])
    return float(wall), float(cpu), emitted


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--rounds", type=int, default=3)
    args.add_argument("--messages", type=int, default=100_000)
    args.add_argument("--seed", type=int, default=42)
    args.add_argument("--workdir", type=Path, default=Path("bench/out/replay"))
    args.add_argument("--only", nargs="+", choices=MODES, default=list(MODES))
    args.add_argument("--measure", choices=MODES, help=argparse.SUPPRESS)
    args.add_argument("--inbox", type=Path, help=argparse.SUPPRESS)
    args.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    opts = args.parse_args()
    logging.disable(logging.WARNING)
    if opts.measure:  # a child: one measurement, printed as JSON
        print(json.dumps(measure(opts.measure, opts.inbox, opts.scratch)))
        return

    inbox = simulated_inbox(opts.workdir, opts.messages, opts.seed).resolve()
    messages = len(list_inputs([inbox]))
    modes = ["ceiling", *(m for m in opts.only if m != "ceiling")]
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    cpus: dict[str, list[float]] = {mode: [] for mode in modes}
    emitted: dict[str, set[int]] = {mode: set() for mode in modes}
    print(f"messages {messages}, {opts.rounds} rounds by turns, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="aes-bounds-") as tmp:
        for round_ in range(1, opts.rounds + 1):
            for mode in modes:
                wall, cpu, count = run_mode(mode, inbox, Path(tmp) / "scratch")
                if count is not None:
                    emitted[mode].add(count)
                rates[mode].append(messages / wall)
                cpus[mode].append(cpu / messages * 1e6)
                print(f"round {round_}  {mode:10s} {messages / wall:8.0f} msg/s"
                      f"  {cpu / messages * 1e6:6.1f} us CPU/msg", flush=True)
    ceiling = statistics.median(rates["ceiling"])
    print("median:")
    for mode in modes:
        rate = statistics.median(rates[mode])
        print(f"  {mode:10s} {rate:8.0f} msg/s  {statistics.median(cpus[mode]):6.1f} us CPU/msg"
              f"  {rate / ceiling:5.2f} of the ceiling")
    deciding = {mode: counts for mode, counts in emitted.items() if counts}
    if deciding:
        same = len(set().union(*deciding.values())) == 1
        print("emitted  " + ", ".join(f"{mode} {sorted(c)}" for mode, c in deciding.items())
              + ("  (alike)" if same else "  DIFFER"))


if __name__ == "__main__":
    main()
