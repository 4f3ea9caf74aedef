"""Replay throughput against its ceiling, a parse-only lxml pass over the same files.

    .venv/bin/python bench/replay.py [--messages 100000] [--workdir bench/out]

Prints messages/s for both, measured in the same run, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import time
from pathlib import Path

from lxml import etree

from gateway.cli import _simulate, run_replay

MESSAGES_PER_CASE = 6.7  # what the simulator's case mix yields on average


def parse_only(files: list[Path]) -> float:
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    started = time.perf_counter()
    for path in files:
        with contextlib.suppress(etree.XMLSyntaxError):  # the bad input is part of the load
            etree.fromstring(path.read_bytes(), parser)
    return len(files) / (time.perf_counter() - started)


def simulated_inbox(workdir: Path, messages: int, seed: int) -> Path:
    """The simulated messages of this size and seed, made once and kept in `workdir`."""
    inbox = workdir / "in"
    marker = workdir / f"simulated-v2-{messages}-{seed}"  # v2: pair outcomes
    if not marker.exists():
        shutil.rmtree(workdir, ignore_errors=True)
        _simulate(inbox, int(messages / MESSAGES_PER_CASE), seed, 0.03)
        marker.touch()
    return inbox


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--messages", type=int, default=100_000)
    args.add_argument("--workdir", type=Path, default=Path("bench/out/replay"))
    args.add_argument("--seed", type=int, default=42)
    opts = args.parse_args()
    logging.disable(logging.WARNING)  # quarantine warnings are not what is measured

    inbox = simulated_inbox(opts.workdir, opts.messages, opts.seed)
    files = sorted(inbox.glob("*.xml"))
    parse_only(files[:5000])  # warm the page cache and lxml
    ceiling = max(parse_only(files) for _ in range(3))  # best of three: a conservative ratio

    store = opts.workdir / "bench.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    started = time.perf_counter()
    summary = asyncio.run(run_replay([inbox], store, str(opts.workdir / "out.jsonl"),
                                     close_windows=True))
    elapsed = time.perf_counter() - started
    rate = len(files) / elapsed
    key = json.loads((inbox / "answer-key.json").read_text())
    print(f"messages          {len(files)}")
    print(f"parse-only (lxml) {ceiling:10.0f} msg/s")
    size_mb = store.stat().st_size / 1e6
    print(f"replay            {rate:10.0f} msg/s  ({elapsed:.1f} s, store {size_mb:.0f} MB)")
    print(f"replay / ceiling  {rate / ceiling:10.2f}")
    print(f"answer key        {'matches' if summary == key else 'DIFFERS'}")


if __name__ == "__main__":
    main()
