"""Crash campaign against the real RabbitMQ: nothing accepted is lost, nothing is renamed.

    .venv/bin/python bench/crash.py [--cases 400] [--kills 6] [--restart-broker]

Publishes simulated transition traffic (both versions, two mailboxes) at a steady rate while
`aes-gateway run` is killed with SIGKILL at random moments and restarted; optionally RabbitMQ
is restarted mid-stream. At the end a last run drains everything. Every event must be on the
canonical exchange, and no event under two ids: the distinct event ids on the exchange equal
the answer key's count of events and links, whatever repeats the crashes caused.
Prints one line of figures; exit 1 when anything was lost or renamed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.simulate import simulate  # noqa: E402
from tests import brokers  # noqa: E402

CLI = [sys.executable, "-m", "gateway.cli"]


def start_gateway(config: Path, until_idle: float | None = None) -> subprocess.Popen[bytes]:
    args = [*CLI, "run", "--config", str(config)]
    if until_idle is not None:
        args += ["--until-idle", str(until_idle)]
    env = {**os.environ, "AES_GATEWAY_LOG_LEVEL": "ERROR"}
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def restart_broker() -> float:
    started = time.monotonic()
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True)
    return time.monotonic() - started


async def campaign(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    rng = random.Random(args.seed)
    sim = simulate(args.cases, args.seed, bad_share=0.03, scenarios=False)
    topo = await brokers.declare()
    streams = brokers.streams(topo, sim.messages)
    config = workdir / "gateway.toml"
    config.write_text(brokers.config_toml(topo, str(workdir / "gateway.db")))
    publisher = asyncio.create_task(brokers.publish_steadily(streams, args.rate))
    kills, broker_restart_s = 0, None
    gateway = start_gateway(config)
    while not publisher.done() or kills < args.kills:
        await asyncio.sleep(rng.uniform(0.3, 1.5))
        gateway.send_signal(signal.SIGKILL)
        gateway.wait()
        kills += 1
        if args.restart_broker and broker_restart_s is None and kills == args.kills // 2:
            broker_restart_s = await asyncio.to_thread(restart_broker)
        gateway = start_gateway(config)
    await publisher
    gateway.send_signal(signal.SIGTERM)  # a graceful stop must lose nothing either
    gateway.wait()
    started = time.monotonic()
    final = start_gateway(config, until_idle=2.0)
    final_exit = await asyncio.to_thread(final.wait)
    recover_s = time.monotonic() - started
    events = await brokers.drain(topo.events_queue)
    left = [await brokers.depth(q) for q in (topo.q22, topo.q30)]
    await brokers.delete(topo)
    ids = [json.loads(m.body)["event_id"] for m in events]
    expected = sim.canonical_events()
    return {
        "messages": len(streams), "kills": kills, "broker_restart_s": broker_restart_s,
        "expected_events": expected, "distinct_on_exchange": len(set(ids)),
        "lost": expected - len(set(ids)) if len(set(ids)) <= expected else 0,
        "renamed": max(0, len(set(ids)) - expected),
        "repeats_same_id": len(ids) - len(set(ids)), "left_in_mailboxes": sum(left),
        "drain_s": round(recover_s, 1), "final_exit": final_exit, "message_id_is_event_id": all(
            m.message_id == i for m, i in zip(events, ids, strict=True)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=400)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--rate", type=float, default=800.0, help="messages/s published")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--restart-broker", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aes-crash-") as tmp:
        figures = asyncio.run(campaign(args, Path(tmp)))
    print(json.dumps(figures))
    ok = figures["lost"] == 0 and figures["renamed"] == 0 and figures["left_in_mailboxes"] == 0
    ok = ok and figures["final_exit"] == 0
    return 0 if ok and figures["message_id_is_event_id"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
