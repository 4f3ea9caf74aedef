"""A RabbitMQ restart under a running gateway: it reconnects and consumes again by itself.

aio-pika restores after a reconnect only the queues a robust channel declared; a consumer on a
queue object it did not know of stayed dead until the gateway was restarted.
"""

from __future__ import annotations

import asyncio
import json
import tempfile

from adapters.runtime import run
from gateway import config as cfg
from gateway.simulate import simulate
from tests import brokers


def restart_rabbitmq() -> None:
    for command in ("stop_app", "start_app", "await_startup"):
        brokers.rabbitmqctl(command)


def test_the_gateway_consumes_again_after_a_broker_restart_without_being_restarted() -> None:
    sim = simulate(80, 61, bad_share=0.0, scenarios=False)
    expected = sim.canonical_events()
    half = len(sim.messages) // 2

    async def scenario(store: str) -> tuple[set[str], list[int]]:
        topo = await brokers.declare()
        stop = asyncio.Event()
        try:
            config = cfg.parse(brokers.config_toml(topo, store))
            service = asyncio.create_task(run(config, stop=stop))
            await brokers.publish_simulated(topo, sim.messages[:half])
            await asyncio.sleep(1.0)
            await asyncio.to_thread(restart_rabbitmq)
            await brokers.publish_simulated(topo, sim.messages[half:])
            ids: set[str] = set()
            collected: list[str] = []
            for _ in range(300):  # up to 30 s; the gateway reconnects after 1 s
                collected += [json.loads(m.body)["event_id"]
                              for m in await brokers.drain(topo.events_queue, idle_s=0.1)]
                ids = set(collected)
                if len(ids) >= expected:
                    break
                await asyncio.sleep(0.1)
            left = [await brokers.depth(q) for q in (topo.q22, topo.q30)]
            stop.set()
            await service
        finally:
            await brokers.delete(topo)
        return ids, left

    with tempfile.TemporaryDirectory() as tmp:
        ids, left = asyncio.run(scenario(f"{tmp}/g.db"))
    assert len(ids) == expected
    assert left == [0, 0]
