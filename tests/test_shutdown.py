"""A stopped gateway leaves nothing running behind: every connection it opened is closed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from adapters.runtime import run
from gateway import config as cfg
from gateway.simulate import simulate
from tests import brokers
from tests.mosquitto import Mosquitto, free_port


def test_run_returns_with_no_task_of_its_own_left(tmp_path: Path) -> None:
    """Every kind of source and sink at once, each with work to do, then a stop."""
    broker = Mosquitto(tmp_path)
    broker.start()

    async def scenario() -> list[str]:
        topo = await brokers.declare()
        try:
            sim = simulate(20, 3, bad_share=0.1, scenarios=False)
            await brokers.publish_simulated(topo, sim.messages)
            config = cfg.parse(brokers.config_toml(topo, str(tmp_path / "g.db"), f"""
[[sources]]
type = "push"
listen = "127.0.0.1:{free_port()}"
[[sinks]]
type = "mqtt"
url = "mqtt://127.0.0.1:{broker.port}"
[[sinks]]
type = "jsonl"
path = "{tmp_path / 'out.jsonl'}"
"""))
            await run(config, until_idle=1.0)
            await asyncio.sleep(0.2)  # what a closing connection schedules runs now
            left = asyncio.all_tasks() - {asyncio.current_task()}
            return sorted(repr(task.get_coro()) for task in left)
        finally:
            await brokers.delete(topo)

    try:
        left = asyncio.run(scenario())
    finally:
        broker.stop()
    assert left == []
