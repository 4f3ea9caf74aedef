"""The live gateway's memory over a long steady run, while its store grows.

    .venv/bin/python bench/soak.py [--rate 500] [--minutes 10] [--sample-s 30]

Runs `aes-gateway run` in a process of its own (two mailboxes on the RabbitMQ of this machine
in; the canonical exchange, a Mosquitto of its own and a JSON Lines file out) and publishes
fresh simulated traffic at a steady rate: a new seed for every 20 000 messages, so that the
store keeps growing as in production. Every `--sample-s` it prints the messages published and
committed, the resident memory (RSS) of the gateway and of its parse worker, and the store's
size. At the end: the gateway's RSS after its warm-up (the first minute, or the first fifth
of a longer run) and at the end, its growth per 100 000 messages, the gateway's log lines by
level, and the receive -> commit p99 of the whole run. A gateway whose memory grows with the
traffic (a cache, a map of deliveries, a metric's labels) shows here, long before a
municipality's service runs out of it.

`--push` POSTs the traffic to a push receiver instead, as the Beskedfordeler does, each
answered only after its outcome is committed. `--mqtt-down` leaves the MQTT sink without a
broker for the whole run, as in a long outage downstream: its events wait in the store, and
the memory must not grow with them. `--reconnect-every S` closes the gateway's AMQP
connections every S seconds (found by their names), as a broker operator or a network would:
each reconnection must leave nothing behind.
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
from collections import Counter
from pathlib import Path

import aio_pika
import aiohttp
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.latency import buckets, publish_at, quantile  # noqa: E402
from bench.scale import children  # noqa: E402
from gateway.simulate import simulate  # noqa: E402
from tests import brokers  # noqa: E402
from tests.mosquitto import Mosquitto, free_port  # noqa: E402
from tests.test_push import status_code  # noqa: E402

CHUNK = 20_000  # messages simulated with one seed
PUSH_CLIENTS = 32  # connections POSTing at once with --push
CASES_PER_CHUNK = int(CHUNK / 6.7) + 1  # simulated cases give about 6.7 messages each


def rss_mb(pid: int) -> float:
    """The resident memory of process `pid`, in MB; 0 when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0.0
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def store_mb(workdir: Path) -> float:
    """The store's files, the WAL included."""
    return sum(p.stat().st_size for p in workdir.glob("gateway.db*")) / 1e6


def committed(port: int) -> int:
    """Messages whose outcome the gateway has committed, from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return int(sum(sample.value for family in text_string_to_metric_families(text)
                   if family.name == "aes_gateway_messages"
                   for sample in family.samples if sample.name.endswith("_total")))


def close_gateway_connections() -> int:
    """Closes every AMQP connection of the gateway (they name themselves `aes-gateway ...`),
    as a broker's operator or a network failure would; returns how many."""
    listed = subprocess.run(
        ["rabbitmqctl", "list_connections", "pid", "client_properties", "--formatter", "json"],
        check=True, capture_output=True, text=True).stdout
    closed = 0
    for connection in json.loads(listed):
        names = [value for key, _, value in connection["client_properties"]
                 if key == "connection_name"]
        if names and str(names[0]).startswith("aes-gateway "):
            subprocess.run(["rabbitmqctl", "close_connection", connection["pid"], "soak"],
                           check=False, capture_output=True)
            closed += 1
    return closed


async def waiting(topo: brokers.Topology) -> int:
    """Messages still in the mailboxes: with lost acks (closed connections), redeliveries are
    counted as committed too, so the count alone could end the run early."""
    return sum([await brokers.depth(q) for q in (topo.q22, topo.q30)])


async def close_now_and_then(every_s: float, closed: list[int]) -> None:
    """The gateway's AMQP connections closed every `every_s` seconds; `closed[0]` counts."""
    while True:
        await asyncio.sleep(every_s)
        closed[0] += await asyncio.to_thread(close_gateway_connections)


async def delete_collectors(topo: brokers.Topology) -> None:
    """The queues that collect what the gateway emits: nobody reads them here, and the broker
    would keep every event of the run."""
    connection = await aio_pika.connect(brokers.AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for name in (topo.events_queue, topo.quarantine_queue):
            await channel.queue_delete(name)


async def post_at(session: aiohttp.ClientSession, url: str, rate: float, bodies: list[bytes],
                  answers: Counter[int]) -> None:
    """POSTed in 10 ms ticks at `rate`, as the Beskedfordeler pushes (the session's connection
    limit bounds how many wait for their answer at once); each answer's StatusKode counted."""

    async def post(body: bytes) -> None:
        async with session.post(url, data=body) as response:
            answers[status_code(await response.text())] += 1

    per_tick = max(1, round(rate / 100))
    started = time.perf_counter()
    posting: set[asyncio.Task[None]] = set()
    for tick, index in enumerate(range(0, len(bodies), per_tick)):
        for body in bodies[index: index + per_tick]:
            posting.add(task := asyncio.create_task(post(body)))
            task.add_done_callback(posting.discard)
        delay = started + (tick + 1) / 100 - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    await asyncio.gather(*posting)


async def publish_fresh(topo: brokers.Topology, rate: float, total: int, seed: int,
                        published: list[int], push: str | None, answers: Counter[int]) -> None:
    """`total` messages at `rate`, a new simulation (and seed) for every CHUNK of them: to the
    mailboxes, or POSTed to the push receiver at `push`."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=PUSH_CLIENTS)) as http:
        while published[0] < total:
            sim = simulate(CASES_PER_CHUNK, seed + published[0], bad_share=0.03,
                           scenarios=False)
            streams = brokers.streams(topo, sim.messages)[: min(CHUNK, total - published[0])]
            for start in range(0, len(streams), 1000):  # counted as it goes
                piece = streams[start: start + 1000]
                if push is None:
                    await publish_at(rate, piece)
                else:
                    await post_at(http, push, rate, [body for _, body in piece], answers)
                published[0] += len(piece)


async def soak(args: argparse.Namespace, workdir: Path) -> None:
    total = int(args.rate * args.minutes * 60)
    topo = await brokers.declare()
    await delete_collectors(topo)
    mosquitto = Mosquitto(workdir)
    if not args.mqtt_down:
        mosquitto.start()  # else the MQTT sink's port has no broker for the whole run
    port, push_port = free_port(), free_port()
    push = f"http://127.0.0.1:{push_port}/" if args.push else None
    answers: Counter[int] = Counter()
    config = workdir / "gateway.toml"
    config.write_text(brokers.config_toml(topo, str(workdir / "gateway.db")).replace(
        'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"') + f"""
[[sinks]]
type = "mqtt"
url = "mqtt://127.0.0.1:{mosquitto.port}"
topic_prefix = "soak"
{"max_backlog = 100000000  # waiting in the store, not throttling" if args.mqtt_down else ""}
[[sinks]]
type = "jsonl"
path = "{workdir / 'canonical.jsonl'}"
rotate_bytes = 104857600
""" + (f'[[sources]]\ntype = "push"\nlisten = "127.0.0.1:{push_port}"\n' if args.push else ""))
    env = {**os.environ, "AES_GATEWAY_LOG_LEVEL": "INFO"}
    log_file = workdir / "gateway.log"
    gateway = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run",  # noqa: ASYNC220 - started once
                                "--config", str(config)], cwd=ROOT, env=env,
                               stderr=log_file.open("wb"))
    published, closed = [0], [0]
    closer: asyncio.Task[None] | None = None
    samples: list[tuple[float, int, int, float, float]] = []
    try:
        for _ in range(200):  # until it listens
            try:
                committed(port)
                break
            except OSError:
                await asyncio.sleep(0.05)
        publisher = asyncio.create_task(publish_fresh(topo, args.rate, total, args.seed,
                                                      published, push, answers))
        closer = (asyncio.create_task(close_now_and_then(args.reconnect_every, closed))
                  if args.reconnect_every else None)
        started = time.monotonic()
        print(f"{'time':>6} {'published':>10} {'committed':>10} {'gateway RSS':>12} "
              f"{'worker RSS':>11} {'store MB':>9}")
        while (not publisher.done() or committed(port) < published[0]
               or await waiting(topo)):
            if publisher.done():  # the last of it: until all is committed, or the next sample
                for _ in range(max(1, round(args.sample_s / 0.2))):
                    if committed(port) >= published[0] and not await waiting(topo):
                        break
                    await asyncio.sleep(0.2)
                if samples and committed(port) == samples[-1][2]:
                    raise SystemExit(f"the gateway committed nothing in {args.sample_s} s, "
                                     f"{published[0] - samples[-1][2]} messages short")
            else:
                await asyncio.wait({publisher}, timeout=args.sample_s)
            if publisher.done() and publisher.exception() is not None:
                raise publisher.exception()  # type: ignore[misc]
            worker = sum(rss_mb(child) for child in children(gateway.pid))
            store = store_mb(workdir)
            sample = (time.monotonic() - started, published[0], committed(port),
                      rss_mb(gateway.pid), worker)
            samples.append(sample)
            print(f"{sample[0]:5.0f}s {sample[1]:10d} {sample[2]:10d} {sample[3]:9.1f} MB "
                  f"{sample[4]:8.1f} MB {store:9.1f}")
        cumulative = buckets(port)
    finally:
        if closer is not None:
            closer.cancel()
        stopping = time.monotonic()
        gateway.terminate()
        try:
            gateway.wait(timeout=60)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()
            print("the gateway did not stop within 60 s of SIGTERM: killed")
        stopped_s = time.monotonic() - stopping
        mosquitto.stop()
        await brokers.delete(topo)
    # after the warm-up: the first minute, or the first fifth of a longer run
    warm = next((s for s in samples if s[0] >= max(60, samples[-1][0] / 5)), samples[0])
    end = samples[-1]
    growth = end[3] - warm[3]
    per_100k = growth / max(end[2] - warm[2], 1) * 100_000
    print(f"gateway RSS         {warm[3]:.1f} MB after {warm[0]:.0f} s ({warm[2]} messages), "
          f"{end[3]:.1f} MB at the end ({end[2]}): {growth:+.1f} MB, {per_100k:+.2f} MB per "
          "100 000 messages")
    print(f"peak                gateway {max(s[3] for s in samples):.1f} MB, worker "
          f"{max(s[4] for s in samples):.1f} MB")
    levels = Counter(str(json.loads(line).get("level")) for line in
                     log_file.read_text().splitlines() if line.startswith("{"))
    print(f"log lines           {sum(levels.values())} ("
          + ", ".join(f"{level} {count}" for level, count in sorted(levels.items())) + ")")
    if push:
        print("push answers        " + ", ".join(
            f"StatusKode {code}: {count}" for code, count in sorted(answers.items())))
    if args.reconnect_every:
        print(f"connections closed  {closed[0]} (every {args.reconnect_every:g} s)")
    print(f"stop (SIGTERM)      {stopped_s:.1f} s")
    print(f"receive -> commit   p99 {quantile(0.99, cumulative) * 1000:.1f} ms over "
          f"{cumulative[-1][1]:.0f} messages")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--sample-s", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--push", action="store_true", help="POST the traffic to a push "
                        f"receiver, {PUSH_CLIENTS} connections at once, not to the mailboxes")
    parser.add_argument("--reconnect-every", type=float, default=0.0, help="close the "
                        "gateway's AMQP connections every this many seconds (rabbitmqctl)")
    parser.add_argument("--mqtt-down", action="store_true", help="no broker on the MQTT "
                        "sink's port for the whole run: its events wait in the store")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aes-soak-") as workdir:
        asyncio.run(soak(args, Path(workdir)))


if __name__ == "__main__":
    main()
