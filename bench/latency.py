"""Receive -> commit latency at a steady rate, from the gateway's own histogram.

    .venv/bin/python bench/latency.py [--rate 1000] [--seconds 30]

Publishes simulated traffic (both versions, two mailboxes on the RabbitMQ of this machine) at a
steady rate, in 10 ms ticks, to `aes-gateway run` in a process of its own, then reads
`aes_gateway_receive_to_commit_seconds` from its /metrics: the time from a message's delivery to
the commit of its outcome (after which it is acknowledged). Prints the achieved rate, p50, p90
and p99 (interpolated within the histogram's buckets, as Prometheus's histogram_quantile does)
and the share of messages committed within 50 ms. Exit 1 when p99 is 50 ms or more.
`--bare` first runs, at the same rate, a bare aio-pika consume -> republish -> ack loop (the
passthrough of `bench/amqp.py`, prefetch 300 a mailbox as the gateway's) in a process of its
own, and prints its delivery -> ack latency: what the AMQP client and broker alone cost on
this machine at this rate, the reference for the gateway's figures.
`--busy-cores N` runs N CPU-bound processes alongside, as on a machine with other work.
`--slow-fsync-ms M` makes every fsync of the gateway's process M ms longer, as on network
storage (bench/slowsync.c, built with the machine's C compiler and loaded with LD_PRELOAD).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aio_pika
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.amqp import passthrough  # noqa: E402
from gateway.simulate import simulate  # noqa: E402
from tests import brokers  # noqa: E402
from tests.mosquitto import free_port  # noqa: E402

METRIC = "aes_gateway_receive_to_commit_seconds"
BARE_PREFETCH = 300  # a mailbox's, as the gateway's configuration below has it


async def publish_at(rate: float, streams: list[tuple[str, bytes]]) -> float:
    """Publish in 10 ms ticks at `rate`; returns the achieved rate."""
    connection = await aio_pika.connect(brokers.AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        per_tick = max(1, round(rate / 100))
        started = time.perf_counter()
        for tick, index in enumerate(range(0, len(streams), per_tick)):
            await asyncio.gather(*(
                channel.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), q)
                for q, body in streams[index: index + per_tick]))
            delay = started + (tick + 1) / 100 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        return len(streams) / (time.perf_counter() - started)


def bare_child(prefix: str, total: int) -> None:
    """Runs in a process of its own: prints the sorted latencies as JSON."""
    latencies: list[float] = []
    asyncio.run(passthrough(brokers.Topology(prefix), total, BARE_PREFETCH, latencies))
    print(json.dumps(sorted(latencies)))


async def bare_campaign(args: argparse.Namespace) -> list[float]:
    """The bare passthrough at the campaign's rate, in a process of its own."""
    messages = int(args.rate * args.seconds)
    sim = simulate(int(messages / 6.7) + 1, args.seed, bad_share=0.03, scenarios=False)
    topo = await brokers.declare()
    streams = brokers.streams(topo, sim.messages)[:messages]
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--bare-child", topo.prefix, str(len(streams)),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    try:
        await asyncio.sleep(1.0)  # consuming before the first message
        achieved = await publish_at(args.rate, streams)
        output, _ = await child.communicate()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await brokers.delete(topo)
    latencies = [float(x) for x in json.loads(output)]
    print(f"bare aio-pika       published at {achieved:.0f} msg/s, delivery -> ack "
          + "  ".join(f"p{round(q * 100)} {latencies[int(q * (len(latencies) - 1))] * 1000:.1f} ms"
                      for q in (0.5, 0.9, 0.99))
          + f"  within 50 ms {sum(x < 0.05 for x in latencies) / len(latencies):.4f}")
    return latencies


def buckets(port: int) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of the receive -> commit histogram."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == METRIC:
            return sorted((float(s.labels["le"]), s.value) for s in family.samples
                          if s.name.endswith("_bucket"))
    raise SystemExit(f"{METRIC} not found in /metrics")


def quantile(q: float, cumulative: list[tuple[float, float]]) -> float:
    """Linear interpolation within the bucket that holds the q-quantile."""
    total = cumulative[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / max(
                count - lower_count, 1e-9)
        lower_bound, lower_count = bound, count
    return float("nan")


def slow_sync_library(workdir: Path) -> Path:
    """bench/slowsync.c, compiled into `workdir`."""
    library = workdir / "slowsync.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(library),
                    str(ROOT / "bench" / "slowsync.c"), "-ldl"], check=True)
    return library


async def campaign(args: argparse.Namespace, workdir: Path) -> int:
    messages = int(args.rate * args.seconds)
    sim = simulate(int(messages / 6.7) + 1, args.seed, bad_share=0.03, scenarios=False)
    topo = await brokers.declare()
    port = free_port()
    streams = brokers.streams(topo, sim.messages)[:messages]
    config = workdir / "gateway.toml"
    toml = brokers.config_toml(topo, str(workdir / "gateway.db")).replace(
        'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"')
    if args.batch_wait_ms is not None:
        toml = toml.replace("batch_size = 200",
                            f"batch_size = 200\nbatch_wait_ms = {args.batch_wait_ms}")
    config.write_text(toml)
    env = {**os.environ, "AES_GATEWAY_LOG_LEVEL": "ERROR"}
    if args.slow_fsync_ms:
        env |= {"LD_PRELOAD": str(slow_sync_library(workdir)),
                "SLOWSYNC_US": str(round(args.slow_fsync_ms * 1000))}
    gateway = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run",  # noqa: ASYNC220 - started once
                                "--config", str(config)], cwd=ROOT, env=env)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])  # noqa: ASYNC220 - started once
            for _ in range(args.busy_cores)]
    try:
        for _ in range(200):  # until it listens
            try:
                buckets(port)
                break
            except (OSError, SystemExit):
                await asyncio.sleep(0.05)
        achieved = await publish_at(args.rate, streams)
        while sum([await brokers.depth(q) for q in (topo.q22, topo.q30)]) > 0:  # noqa: ASYNC110 - polls the broker
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        cumulative = buckets(port)
    finally:
        for process in (gateway, *busy):
            process.terminate()
            process.wait()
        await brokers.delete(topo)
    total = cumulative[-1][1]
    within = next(count for bound, count in cumulative if bound >= 0.05)
    p99 = quantile(0.99, cumulative)
    print(f"messages            {len(streams)} (histogram counted {total:.0f})")
    print(f"published at        {achieved:.0f} msg/s (asked {args.rate:.0f})")
    for q in (0.5, 0.9, 0.99):
        print(f"p{round(q * 100):<3}                {quantile(q, cumulative) * 1000:6.1f} ms")
    print(f"within 50 ms        {within / total:.4f}")
    return 0 if p99 < 0.05 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--busy-cores", type=int, default=0, help="CPU-bound processes to run "
                        "alongside, as on a machine with other work (default: none)")
    parser.add_argument("--slow-fsync-ms", type=float, default=0.0, help="make each fsync of "
                        "the gateway this much slower, as on network storage (default: 0)")
    parser.add_argument("--bare", action="store_true", help="first run a bare aio-pika "
                        "passthrough at the same rate, for reference")
    parser.add_argument("--bare-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--batch-wait-ms", type=int, help="store.batch_wait_ms (default: the "
                        "gateway's own)")
    args = parser.parse_args()
    if args.bare_child:
        bare_child(args.bare_child[0], int(args.bare_child[1]))
        return 0
    if args.bare:
        asyncio.run(bare_campaign(args))
    with tempfile.TemporaryDirectory(prefix="aes-latency-") as tmp:
        return asyncio.run(campaign(args, Path(tmp)))


if __name__ == "__main__":
    raise SystemExit(main())
