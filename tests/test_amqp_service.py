"""`aes-gateway run` against the real RabbitMQ: two mailboxes in, the canonical exchange out."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from gateway.simulate import simulate
from tests import brokers
from tests.conftest import CLI, ROOT, run_cli


def test_both_versions_from_two_queues_give_each_event_once(tmp_path: Path) -> None:
    sim = simulate(cases=80, seed=21, bad_share=0.05, scenarios=False)
    key = sim.answer_key()
    topo = asyncio.run(brokers.declare())
    try:
        asyncio.run(brokers.publish_simulated(topo, sim.messages))
        config = tmp_path / "gateway.toml"
        config.write_text(brokers.config_toml(topo, str(tmp_path / "gateway.db")))
        run_cli("run", "--config", str(config), "--until-idle", "1.5")

        events = asyncio.run(brokers.drain(topo.events_queue))
        quarantined = asyncio.run(brokers.drain(topo.quarantine_queue, idle_s=0.2))
        remaining = [asyncio.run(brokers.depth(q)) for q in (topo.q22, topo.q30)]
    finally:
        asyncio.run(brokers.delete(topo))

    bodies = [json.loads(m.body) for m in events]
    ids = [m.message_id for m in events]
    assert len(set(ids)) == len(ids), "an event reached the exchange twice"
    assert ids == [b["event_id"] for b in bodies]
    assert len(events) == sim.canonical_events()
    assert all(m.routing_key == f"{b['person']['municipality_code'] or 'unknown'}."
               f"{b['category']}.{b['event_type']}" for m, b in zip(events, bodies, strict=True))
    assert all(m.delivery_mode == 2 and m.content_type == "application/json" for m in events)
    reasons = Counter(str((m.headers or {})["reason"]) for m in quarantined)
    assert dict(reasons) == key["quarantined_by_reason"]
    assert remaining == [0, 0], "every mailbox message is acknowledged"
    print(f"{key['messages']} messages from two queues: {len(events)} on the exchange, "
          f"{len(quarantined)} in quarantine, as keyed")


def test_a_message_over_the_limit_is_kept_whole_up_to_16_mib(tmp_path: Path) -> None:
    """Whole, for `quarantine replay` after the limit is raised; of a bigger one, its first
    16 MiB. Until stop 22 any was kept whole: in the store, on the quarantine exchange (which
    may refuse it: RabbitMQ 4 takes no more than 16 MiB by default) and in memory, with
    RabbitMQ 3's own limit at 128 MB, up to `prefetch` of them at a time."""
    heads = [b"<Haendelsesbesked n='%d'>" % n for n in range(2)]
    sizes = [3_000_000, 20_000_000]  # over the 1 MiB limit; the second over 16 MiB too
    bodies = [head + b" " * size for head, size in zip(heads, sizes, strict=True)]
    topo = asyncio.run(brokers.declare())
    try:
        asyncio.run(brokers.publish(topo.q30, bodies))
        config = tmp_path / "gateway.toml"
        config.write_text(brokers.config_toml(topo, str(tmp_path / "gateway.db")))
        run_cli("run", "--config", str(config), "--until-idle", "1.5")
        quarantined = asyncio.run(brokers.drain(topo.quarantine_queue, idle_s=0.2))
        remaining = asyncio.run(brokers.depth(topo.q30))
    finally:
        asyncio.run(brokers.delete(topo))
    with sqlite3.connect(tmp_path / "gateway.db") as db:
        stored = [body for (body,) in db.execute("SELECT body FROM quarantine ORDER BY id")]
    expected = [bodies[0], bodies[1][: 16 * 2**20]]
    assert [len(b) for b in stored] == [len(b) for b in expected]
    assert stored == expected
    assert [m.body for m in quarantined] == expected
    assert [(m.headers or {})["reason"] for m in quarantined] == ["too_large"] * 2
    assert remaining == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_sigterm_mid_stream_loses_nothing(tmp_path: Path, signum: signal.Signals) -> None:
    """SIGHUP (the terminal closed) stops the gateway as SIGTERM does: until stop 16 it
    ended the process on the spot, without its graceful stop."""
    sim = simulate(cases=150, seed=8, bad_share=0.0, scenarios=False)
    topo = asyncio.run(brokers.declare())
    config = tmp_path / "gateway.toml"
    config.write_text(brokers.config_toml(topo, str(tmp_path / "gateway.db")))
    try:
        asyncio.run(brokers.publish_simulated(topo, sim.messages))
        env = {**os.environ, "AES_GATEWAY_LOG_LEVEL": "ERROR"}
        gateway = subprocess.Popen([*CLI, "run", "--config", str(config)], cwd=ROOT, env=env)
        time.sleep(1.5)  # mid-stream: part of the mailboxes decided
        gateway.send_signal(signum)
        assert gateway.wait(timeout=60) == 0
        mid = asyncio.run(brokers.depth(topo.events_queue))
        run_cli("run", "--config", str(config), "--until-idle", "1.5")
        events = asyncio.run(brokers.drain(topo.events_queue))
        left = [asyncio.run(brokers.depth(q)) for q in (topo.q22, topo.q30)]
    finally:
        asyncio.run(brokers.delete(topo))
    ids = {json.loads(m.body)["event_id"] for m in events}
    assert mid > 0
    assert len(ids) == sim.canonical_events()
    assert left == [0, 0]
