"""Peak memory where messages are big: each case one process, its peak RSS printed.

    .venv/bin/python bench/memory.py [CASE ...] [--count N] [--size BYTES]

Cases (all by default):
  replay-files   replay of --count files of --size bytes (over the 1 MiB limit: each is
                 refused as too large, and kept up to 16 MiB); once without and once with a
                 parse worker
  replay-texts   replay of 250 x --count 3.0 messages, each with a Tekst of --size / 250
                 characters (10 000 of 60 KB by default; a text node may have 64 KiB)
  quarantine     `quarantine replay --max-bytes` of a store holding replay-files' messages
  mailbox        the gateway draining --count messages of --size from a mailbox, prefetch
                 300 (brokers)
  push           --count pushes of --size at once, each pushed again after a 40 (brokers)

Defaults: 40 messages of 15 MB (100 files for replay-files). Peak RSS is `ru_maxrss` of the
command, or VmHWM sampled every 20 ms for the gateway. Inputs are kept in bench/out/memory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import brokers  # noqa: E402
from tests import helpers as h  # noqa: E402
from tests.conftest import CLI  # noqa: E402
from tests.helpers import push_to_jsonl  # noqa: E402
from tests.mosquitto import free_port  # noqa: E402
from tests.test_push import PUSH_BODY  # noqa: E402

CASES = ("replay-files", "replay-texts", "quarantine", "mailbox", "push")


def oversized(workdir: Path, count: int, size: int) -> Path:
    """`count` files of `size` bytes, each a distinct message start and blanks."""
    inbox = workdir / f"files-{count}x{size}"
    if not inbox.is_dir():
        inbox.mkdir(parents=True)
        for n in range(count):
            (inbox / f"{n:05d}.xml").write_bytes(b"<Haendelsesbesked n='%05d'>" % n
                                                 + b" " * size)
    return inbox


def long_texts(workdir: Path, count: int, chars: int) -> Path:
    """`count` 3.0 messages, each a new event with a Tekst of `chars` characters."""
    inbox = workdir / f"texts-{count}x{chars}"
    if not inbox.is_dir():
        inbox.mkdir(parents=True)
        text = ("Lang tekst " * (chars // 11 + 1))[:chars]
        for n in range(count):
            xml = h.v30_xml(number=f"AES-2022-{n:07d}", legacy=None, ref=str(uuid.uuid4()))
            xml = xml.replace("</Tidspunkt></Haendelse>",
                              f"</Tidspunkt><Tekst>{text}</Tekst></Haendelse>")
            (inbox / f"{n:05d}.xml").write_bytes(h.v30_inline(xml))
    return inbox


def command_peak(*args: str) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of `aes-gateway args`, which must succeed; run in a process
    of its own, so that ru_maxrss is this command's alone."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter();"
             "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL,"
             " stderr=subprocess.DEVNULL);"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,"
             " time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", probe, *CLI, *args], check=True,
                         capture_output=True, text=True, cwd=ROOT).stdout.split()
    return float(out[0]), float(out[1])


def start_gateway(config: Path, until_idle: float = 1.5) -> subprocess.Popen[bytes]:
    env = {**os.environ, "AES_GATEWAY_LOG_LEVEL": "ERROR"}
    return subprocess.Popen([*CLI, "run", "--config", str(config), "--until-idle",
                             str(until_idle)], cwd=ROOT, env=env)


def vm_hwm(pid: int) -> int:
    """A live process's peak RSS in kB; 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next(int(line.split()[1]) for line in status.splitlines()
                if line.startswith("VmHWM"))


async def peak_of(process: subprocess.Popen[bytes]) -> float:
    """The process's peak RSS in MB, sampled every 20 ms until it exits."""
    peak = 0
    while process.poll() is None:
        peak = max(peak, vm_hwm(process.pid))
        await asyncio.sleep(0.02)
    return peak / 1024


def replay_files(workdir: Path, count: int, size: int) -> None:
    inbox = oversized(workdir, count, size)
    for workers in ("0", "1"):
        peak, took = command_peak("replay", str(inbox), "--output", os.devnull,
                                  "--workers", workers)
        print(f"replay-files   {count} x {size / 1e6:.1f} MB, {workers} workers: peak RSS "
              f"{peak:.0f} MB, {took:.1f} s", flush=True)


def replay_texts(workdir: Path, count: int, size: int) -> None:
    chars = size // 250
    inbox = long_texts(workdir, 250 * count, chars)
    peak, took = command_peak("replay", str(inbox), "--output", os.devnull)
    print(f"replay-texts   {250 * count} messages with a Tekst of {chars} characters: peak RSS "
          f"{peak:.0f} MB, {took:.1f} s", flush=True)


def quarantine(workdir: Path, count: int, size: int) -> None:
    store = workdir / "quarantine.db"
    for stale in workdir.glob("quarantine.db*"):
        stale.unlink()
    subprocess.run([*CLI, "replay", str(oversized(workdir, count, size)), "--store", str(store),
                    "--output", os.devnull], check=True, cwd=ROOT, stderr=subprocess.DEVNULL)
    peak, took = command_peak("quarantine", "replay", "--store", str(store), "--max-bytes",
                              str(size + (1 << 20)), "--output", os.devnull)
    print(f"quarantine     replay of {count} x {size / 1e6:.1f} MB: peak RSS {peak:.0f} MB, "
          f"{took:.1f} s", flush=True)


async def mailbox(count: int, size: int) -> None:
    topo = await brokers.declare()
    try:
        await brokers.publish(topo.q30, [b"<Haendelsesbesked n='%05d'>" % n + b" " * size
                                         for n in range(count)])
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "g.toml"
            config.write_text(brokers.config_toml(topo, str(Path(tmp) / "g.db")))
            started = time.perf_counter()
            process = start_gateway(config)
            peak = await peak_of(process)
            took = time.perf_counter() - started
        left = await brokers.depth(topo.q30)
    finally:
        await brokers.delete(topo)
    print(f"mailbox        {count} x {size / 1e6:.1f} MB, prefetch 300: peak RSS "
          f"{peak:.0f} MB, {took:.1f} s, {left} left, exit {process.returncode}",
          flush=True)


async def push(count: int, size: int) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "g.toml"
        config.write_text(push_to_jsonl(Path(tmp), port) + '[http]\nlisten = "127.0.0.1:0"\n')
        process = start_gateway(config, until_idle=3.0)
        sampler = asyncio.create_task(peak_of(process))
        url = f"http://127.0.0.1:{port}/"
        posts = 0

        async def one(session: aiohttp.ClientSession, n: int) -> None:
            nonlocal posts
            body = PUSH_BODY + b"<!-- %d -->" % n + b" " * size  # one message each
            while True:
                posts += 1
                async with session.post(url, data=body) as response:
                    if "<StatusKode>20<" in await response.text():
                        return
                await asyncio.sleep(0.2)

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            for _ in range(200):  # until the receiver listens
                try:
                    async with session.get(url):
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.05)
            started = time.perf_counter()
            await asyncio.gather(*(one(session, n) for n in range(count)))
            took = time.perf_counter() - started
        peak = await sampler
    print(f"push           {count} x {size / 1e6:.1f} MB at once: peak RSS {peak:.0f} MB, "
          f"{took:.1f} s, {posts} posts ({posts - count} answered 40)", flush=True)


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument("cases", nargs="*", metavar="CASE", help=", ".join(CASES))
    args.add_argument("--count", type=int, default=40)
    args.add_argument("--size", type=int, default=15_000_000)
    args.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out" / "memory")
    opts = args.parse_args()
    if unknown := set(opts.cases) - set(CASES):
        args.error(f"no such case: {', '.join(sorted(unknown))}")
    opts.workdir.mkdir(parents=True, exist_ok=True)
    for case in opts.cases or CASES:
        if case == "replay-files":
            replay_files(opts.workdir, opts.count * 5 // 2, opts.size)
        elif case == "replay-texts":
            replay_texts(opts.workdir, opts.count, opts.size)
        elif case == "quarantine":
            quarantine(opts.workdir, opts.count, opts.size)
        elif case == "mailbox":
            asyncio.run(mailbox(opts.count, opts.size))
        else:
            asyncio.run(push(opts.count, opts.size))


if __name__ == "__main__":
    main()
