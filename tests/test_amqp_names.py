"""The gateway's AMQP connections name themselves to the broker: its operator (the
Beskedfordeler's, or a municipality's own RabbitMQ) sees which source or sink each one is.

Until stop 21 they were unnamed Python clients in RabbitMQ's management UI and in
`rabbitmqctl list_connections`.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from adapters.runtime import run
from gateway import config as cfg
from gateway.metrics import version
from gateway.simulate import simulate
from tests import brokers
from tests.mosquitto import free_port


def connection_names() -> list[str]:
    """`connection_name` of every connection the broker has, as it reports them."""
    printed = subprocess.run(
        ["rabbitmqctl", "list_connections", "client_properties", "--formatter", "json"],
        check=True, capture_output=True, text=True).stdout
    names = []
    for connection in json.loads(printed):
        for key, _, value in connection["client_properties"]:
            if key == "connection_name":
                names.append(value)
    return names


def test_the_broker_shows_which_source_and_sink_each_connection_is(tmp_path: Path) -> None:
    http = free_port()

    topo = asyncio.run(brokers.declare())

    async def scenario() -> tuple[list[str], str]:
        config = cfg.parse(brokers.config_toml(topo, str(tmp_path / "g.db")).replace(
            'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{http}"'))
        stop = asyncio.Event()
        service = asyncio.create_task(run(config, stop=stop))
        try:
            for _ in range(100):  # until both mailboxes are consumed
                try:
                    if (await brokers.readyz(http))[0] == 200:
                        break
                except OSError:
                    pass
                await asyncio.sleep(0.1)
            # the sink connects at its first send
            await brokers.publish_simulated(topo, simulate(3, 1, bad_share=0.0,
                                                           scenarios=False).messages)
            for _ in range(100):
                if await brokers.depth(topo.events_queue) > 0:
                    break
                await asyncio.sleep(0.1)
            return await asyncio.to_thread(connection_names), cfg.sink_name(config.sinks[0])
        finally:
            stop.set()
            await service
            await brokers.delete(topo)

    names, sink = asyncio.run(scenario())
    release = f"aes-gateway {version()}"
    assert f"{release} source amqp:{topo.q22}" in names
    assert f"{release} source amqp:{topo.q30}" in names
    assert f"{release} sink {sink}" in names
    assert not any("guest:" in name for name in names), "no password shown"
