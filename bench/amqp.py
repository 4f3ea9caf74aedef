"""End-to-end rate through RabbitMQ next to its ceiling, a bare aio-pika passthrough.

    .venv/bin/python bench/amqp.py [--messages 20000]

Both versions are loaded into two mailbox queues. The ceiling consumes them with aio-pika and
republishes every body with publisher confirms (batched acks, pipelined confirms: the same
broker work without any deciding or storing). Then the gateway takes the same messages from
the same queues through its store to the canonical exchange. Both rates count input
messages per second, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

import aio_pika

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.runtime import run  # noqa: E402 - after the path is set
from gateway import config as cfg  # noqa: E402
from gateway.model import Version  # noqa: E402
from gateway.simulate import simulate  # noqa: E402
from tests import brokers  # noqa: E402


async def load(topo: brokers.Topology, messages: list[tuple[Version | None, bytes]]) -> None:
    await brokers.publish(topo.q22, [b for v, b in messages if v is Version.V2_2])
    await brokers.publish(topo.q30, [b for v, b in messages if v is not Version.V2_2])


async def passthrough(topo: brokers.Topology, total: int, window: int = 1000,
                      latencies: list[float] | None = None) -> float:
    """Consume both queues; a flusher republishes what has arrived with pipelined confirms and
    then acks it (one multiple-ack per channel), while consumption goes on. With `latencies`,
    each message's time from delivery to the ack after its republish's confirm is added."""
    connection = await aio_pika.connect(brokers.AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=window)
        publishing = await connection.channel(publisher_confirms=True)
        exchange = await publishing.declare_exchange(topo.exchange, aio_pika.ExchangeType.TOPIC,
                                                     durable=True)
        pending: list[tuple[float, aio_pika.abc.AbstractIncomingMessage]] = []
        arrived = asyncio.Event()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            pending.append((time.perf_counter(), message))
            arrived.set()

        started = time.perf_counter()
        for name in (topo.q22, topo.q30):
            queue = await channel.get_queue(name)
            await queue.consume(on_message)
        count = 0
        while count < total:
            await arrived.wait()
            arrived.clear()
            chunk, pending[:] = list(pending), []
            await asyncio.gather(*(exchange.publish(
                aio_pika.Message(m.body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                "x.y.z", mandatory=False) for _, m in chunk))
            for last in {id(m.channel): m for _, m in chunk}.values():
                await last.ack(multiple=True)
            if latencies is not None:
                acked = time.perf_counter()
                latencies += [acked - at for at, _ in chunk]
            count += len(chunk)
        return total / (time.perf_counter() - started)


async def through_gateway(topo: brokers.Topology, total: int, expected: int, db: Path,
                          batch_wait_ms: int | None = None) -> float:
    # the same prefetch as the passthrough; batches as large as one queue's prefetch
    batch = "batch_size = 1000" + ("" if batch_wait_ms is None
                                   else f"\nbatch_wait_ms = {batch_wait_ms}")
    toml = brokers.config_toml(topo, str(db)).replace("batch_size = 200", batch)
    config = cfg.parse(toml.replace("prefetch = 300", "prefetch = 1000"))
    stop = asyncio.Event()
    started = time.perf_counter()
    service = asyncio.create_task(run(config, stop=stop))
    while await brokers.depth(topo.events_queue) < expected:  # noqa: ASYNC110 - polls the broker
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    stop.set()
    await service
    return total / elapsed


async def main(args: argparse.Namespace) -> None:
    logging.disable(logging.WARNING)
    sim = simulate(int(args.messages / 6.7), seed=5, bad_share=0.03, scenarios=False)
    messages = [(m.version, m.body) for m in sim.messages]
    expected = sim.canonical_events()
    topo = await brokers.declare()
    try:
        await load(topo, messages)
        ceiling = await passthrough(topo, len(messages))
        await brokers.drain(topo.events_queue, idle_s=0.1)
        await load(topo, messages)
        with tempfile.TemporaryDirectory() as tmp:
            rate = await through_gateway(topo, len(messages), expected, Path(tmp) / "g.db",
                                         args.batch_wait_ms)
    finally:
        await brokers.delete(topo)
    print(f"messages                {len(messages)}")
    print(f"aio-pika passthrough    {ceiling:8.0f} msg/s")
    print(f"gateway end to end      {rate:8.0f} msg/s")
    print(f"gateway / ceiling       {rate / ceiling:8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch-wait-ms", type=int, help="store.batch_wait_ms (default: the "
                        "gateway's own)")
    asyncio.run(main(parser.parse_args()))
