"""The store's disk fills up: nothing is acknowledged that is not stored, the gateway says it
is not ready, and it resumes by itself when space returns."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from adapters.runtime import run
from gateway import config as cfg
from gateway.simulate import simulate
from tests import brokers
from tests.faults import fill, small_disk
from tests.mosquitto import free_port


def test_disk_full_stops_acks_then_resumes(tmp_path: Path) -> None:
    sim = simulate(120, 51, bad_share=0.0, scenarios=False)
    expected = sim.canonical_events()
    http = free_port()

    async def scenario(disk: Path) -> dict[str, object]:
        topo = await brokers.declare()
        stop = asyncio.Event()
        filler = disk / "filler"
        try:
            config = cfg.parse(brokers.config_toml(topo, str(disk / "g.db")).replace(
                'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{http}"')
                .replace("batch_size = 200", "batch_size = 50"))
            service = asyncio.create_task(run(config, stop=stop))
            await asyncio.sleep(1.0)  # the empty store exists; now the disk fills up
            await asyncio.to_thread(fill, filler)
            await brokers.publish_simulated(topo, sim.messages)
            async with aiohttp.ClientSession() as session:
                for _ in range(40):  # the gauges are refreshed every 5 s
                    await asyncio.sleep(0.5)
                    async with session.get(f"http://127.0.0.1:{http}/readyz") as response:
                        ready_while_full = response.status
                    async with session.get(f"http://127.0.0.1:{http}/metrics") as response:
                        metrics_while_full = await response.text()
                    if "aes_gateway_store_writable 0.0" in metrics_while_full:
                        break
            waiting = [await brokers.depth(q) for q in (topo.q22, topo.q30)]
            await asyncio.to_thread(filler.unlink)  # space returns
            for _ in range(400):  # until every event is out and the mailboxes are empty
                out = await brokers.depth(topo.events_queue)
                mail = [await brokers.depth(q) for q in (topo.q22, topo.q30)]
                if out >= expected and mail == [0, 0]:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await service  # no restart: it must have resumed by itself
            events = await brokers.drain(topo.events_queue)
            left = [await brokers.depth(q) for q in (topo.q22, topo.q30)]
        finally:
            await brokers.delete(topo)
        ids = {json.loads(m.body)["event_id"] for m in events}
        return {"ready_while_full": ready_while_full, "metrics": metrics_while_full,
                "waiting": waiting, "ids": ids, "left": left}

    with small_disk(tmp_path / "disk", "16m") as disk:
        if disk is None:
            pytest.skip("cannot mount a tmpfs here (not root?)")
        result = asyncio.run(scenario(disk))
    assert result["ready_while_full"] == 503
    assert "aes_gateway_store_writable 0.0" in str(result["metrics"])
    assert sum(result["waiting"]) > 0, "messages stay in the mailboxes while nothing is stored"  # type: ignore[arg-type]
    assert len(result["ids"]) == expected  # type: ignore[arg-type]
    assert result["left"] == [0, 0]
