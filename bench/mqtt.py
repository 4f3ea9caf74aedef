"""Canonical events to Mosquitto through the MQTT sink, next to a bare aiomqtt publish loop.

    .venv/bin/python bench/mqtt.py [--messages 20000] [--port 1883]

Simulated traffic is replayed into a store; then its outbox is relayed to Mosquitto by the
gateway's MQTT sink (store reads, QoS 1, the sink's window of publishes in flight), and the
same payloads are published by a bare aiomqtt loop with the same window. Same broker, same run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.mqtt import MqttSink, topic  # noqa: E402 - after the path is set
from adapters.sqlite import Store  # noqa: E402
from gateway import config as cfg  # noqa: E402
from gateway.cli import _simulate, run_replay  # noqa: E402
from gateway.pipeline import Relay  # noqa: E402
from gateway.privacy import CprFilter  # noqa: E402

PREFIX = "bench/aes/case-events"


async def through_sink(store_path: Path, port: int, window: int) -> tuple[int, float]:
    spec = cfg.MqttSink(url=f"mqtt://127.0.0.1:{port}", topic_prefix=PREFIX, window=window)
    sink = MqttSink(spec, "bench-mqtt")
    async with await Store.open(store_path) as store:
        relay = Relay(store, CprFilter(sink, "full", None), window, name="bench-mqtt")
        await relay.start()
        started = time.perf_counter()
        sent = await relay.drain()
        elapsed = time.perf_counter() - started
        await sink.close()
    return sent, sent / elapsed


async def bare_loop(store_path: Path, port: int, window: int) -> float:
    async with await Store.open(store_path) as store:
        rows = await store.outbox_after(0, 10**9)
    async with aiomqtt.Client("127.0.0.1", port, max_inflight_messages=window,
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        client.pending_calls_threshold = window + 1
        started = time.perf_counter()
        for start in range(0, len(rows), window):
            await asyncio.gather(*(client.publish(topic(PREFIX, row), row.body, qos=1)
                                   for row in rows[start : start + window]))
        return len(rows) / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> None:
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        inbox = Path(tmp) / "in"
        _simulate(inbox, int(args.messages / 6.7), 7, 0.03)
        store = Path(tmp) / "g.db"
        await run_replay([inbox], store, str(Path(tmp) / "out.jsonl"))
        ceiling = await bare_loop(store, args.port, args.window)
        events, rate = await through_sink(store, args.port, args.window)
    print(f"events                  {events}")
    print(f"bare aiomqtt loop       {ceiling:8.0f} events/s")
    print(f"gateway MQTT sink       {rate:8.0f} events/s")
    print(f"sink / ceiling          {rate / ceiling:8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--window", type=int, default=256)
    asyncio.run(main(parser.parse_args()))
