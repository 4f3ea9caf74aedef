"""CPU per confirmed publish: the gateway's AMQP sink next to aio-pika's `Exchange.publish`.

    .venv/bin/python bench/publish.py [--messages 20000] [--window 10]

Both publish the same canonical-event-sized bodies to one topic exchange on the RabbitMQ of this
machine, with publisher confirms, `--window` messages in flight (10: what a relay sends per
batch at 1 000 msg/s), by turns, twice each. Prints the process's CPU time per message and the
rate of each. The sink publishes on the aiormq channel under aio-pika (adapters/amqp.py).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aio_pika

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.amqp import AmqpSink, plain_connector  # noqa: E402 - after the path is set
from gateway import config as cfg  # noqa: E402
from gateway.ports import OutboxRow  # noqa: E402
from tests.brokers import AMQP_URL  # noqa: E402

EXCHANGE = "bench.publish"
BODY = b'{"schema":"aes.case-event/1",' + b'"x":"' + b"1" * 600 + b'"}'


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(name: str, messages: int, window: int,
                  send: Callable[[int], Awaitable[None]]) -> None:
    cpu_before, started = cpu(), time.perf_counter()
    for start in range(0, messages, window):
        await send(start)
    elapsed = time.perf_counter() - started
    print(f"{name:22s} {(cpu() - cpu_before) / messages * 1e6:6.0f} us CPU a message"
          f"  {messages / elapsed:7.0f} msg/s")


async def main(messages: int, window: int) -> None:
    connection = await aio_pika.connect_robust(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    await channel.exchange_delete(EXCHANGE)  # one left by an interrupted run
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC,
                                              durable=True)  # as the sink declares it
    spec = cfg.AmqpSink(url=AMQP_URL, exchange=EXCHANGE, quarantine_exchange=None)
    sink = AmqpSink(spec, plain_connector(AMQP_URL, None, "bench"), "bench")

    async def with_aio_pika(start: int) -> None:
        await asyncio.gather(*(
            exchange.publish(aio_pika.Message(
                BODY, content_type="application/json", message_id=str(seq),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT), "101.case.rejected")
            for seq in range(start, start + window)))

    async def with_the_sink(start: int) -> None:
        await sink.send([OutboxRow(seq, str(seq), "101", "case", "rejected", BODY)
                         for seq in range(start, start + window)])

    try:
        for _ in range(2):
            await measure("aio-pika publish", messages, window, with_aio_pika)
            await measure("gateway AMQP sink", messages, window, with_the_sink)
    finally:
        await sink.close()
        await exchange.delete()
        await connection.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.window))
