"""AMQP sources through the broker's and the mailboxes' comings and goings: `/readyz` tells the
truth, consuming resumes by itself, and SIGTERM works while the broker is away.

Until stop 15: a source counted as connected from its first connection on, so `/readyz`
answered 200 through a broker outage and after a mailbox was deleted; a mailbox missing at
start-up was never consumed, even once it existed; and a stop during a broker outage waited
for the broker to come back (cancelling the consumer waited for the connection).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable

import aio_pika

from adapters.runtime import run
from gateway import config as cfg
from gateway.simulate import simulate
from tests import brokers
from tests.mosquitto import free_port

Readiness = tuple[int, list[bool]]  # status, and `connected` of the 2.2 and 3.0 mailboxes


async def readiness(http: int, topo: brokers.Topology) -> Readiness:
    status, body = await brokers.readyz(http)
    return status, [body["sources"][f"amqp:{queue}"] for queue in (topo.q22, topo.q30)]


async def settled(
    http: int, topo: brokers.Topology, until: Callable[[Readiness], bool], seconds: float
) -> Readiness:
    """The readiness once `until` holds, or the last one seen after `seconds`."""
    seen = await readiness(http, topo)
    for _ in range(int(seconds / 0.1)):
        if until(seen):
            break
        await asyncio.sleep(0.1)
        seen = await readiness(http, topo)
    return seen


def test_sources_follow_the_broker_and_the_mailboxes() -> None:
    sim = simulate(40, 7, bad_share=0.0, scenarios=False)
    expected = sim.canonical_events()
    http = free_port()

    async def scenario(store: str) -> dict[str, object]:
        topo = await brokers.declare()
        stop = asyncio.Event()
        seen: dict[str, object] = {}
        both_up = lambda r: r[0] == 200  # noqa: E731
        broker_up = True
        connection = await aio_pika.connect(brokers.AMQP_URL)
        try:
            admin = await connection.channel()
            await admin.queue_delete(topo.q22)  # not there yet when the gateway starts
            config = cfg.parse(brokers.config_toml(topo, store).replace(
                'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{http}"'))
            service = asyncio.create_task(run(config, stop=stop))
            await asyncio.sleep(0.5)
            seen["mailbox missing"] = await settled(http, topo, lambda r: r[1][1], 10)
            await admin.declare_queue(topo.q22, durable=True)
            seen["mailbox created"] = await settled(http, topo, both_up, 30)

            await connection.close()
            await asyncio.to_thread(brokers.rabbitmqctl, "stop_app")
            broker_up = False
            seen["broker down"] = await settled(http, topo, lambda r: r[0] == 503, 10)
            await asyncio.to_thread(brokers.rabbitmqctl, "start_app")
            await asyncio.to_thread(brokers.rabbitmqctl, "await_startup")
            broker_up = True
            seen["broker back"] = await settled(http, topo, both_up, 30)

            connection = await aio_pika.connect(brokers.AMQP_URL)
            admin = await connection.channel()
            await admin.queue_delete(topo.q22)
            seen["mailbox deleted"] = await settled(http, topo, lambda r: r[0] == 503, 10)
            await admin.declare_queue(topo.q22, durable=True)
            seen["mailbox back"] = await settled(http, topo, both_up, 30)
            await connection.close()

            await brokers.publish_simulated(topo, sim.messages)
            for _ in range(300):
                if await brokers.depth(topo.events_queue) >= expected:
                    break
                await asyncio.sleep(0.1)
            seen["events"] = await brokers.depth(topo.events_queue)

            await asyncio.to_thread(brokers.rabbitmqctl, "stop_app")
            broker_up = False
            await asyncio.sleep(0.5)
            started = time.monotonic()
            stop.set()
            await asyncio.wait_for(service, 30)
            seen["stop during outage (s)"] = time.monotonic() - started
        finally:
            if not broker_up:
                await asyncio.to_thread(brokers.rabbitmqctl, "start_app")
                await asyncio.to_thread(brokers.rabbitmqctl, "await_startup")
            await brokers.delete(topo)
        return seen

    with tempfile.TemporaryDirectory() as tmp:
        seen = asyncio.run(scenario(f"{tmp}/g.db"))
    assert seen["mailbox missing"] == (503, [False, True])
    assert seen["mailbox created"] == (200, [True, True])
    assert seen["broker down"] == (503, [False, False])
    assert seen["broker back"] == (200, [True, True])
    assert seen["mailbox deleted"] == (503, [False, True])
    assert seen["mailbox back"] == (200, [True, True])
    assert seen["events"] == expected, "the restored consumers took every message"
    # 0.01 s here; cancelling the consumer is skipped, not waited for (that is bounded at 5 s)
    assert float(seen["stop during outage (s)"]) < 3  # type: ignore[arg-type]
