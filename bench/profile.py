"""Flame graphs of the hot paths with py-spy: replay, AMQP in and out, MQTT out.

    .venv/bin/python bench/profile.py [replay|amqp|mqtt ...] [--messages 30000] [--out DIR]

py-spy is a tool, not a dependency of the gateway: `pip install py-spy` into any environment
and put it on PATH (or pass --py-spy). Each target runs `aes-gateway` in a process of its own,
sampled with its parse worker (--subprocesses):

  replay  `aes-gateway replay` over simulated files
  amqp    `aes-gateway run --until-idle` draining two preloaded mailboxes to the AMQP exchange
  mqtt    the same, with the MQTT sink to a Mosquitto of its own

Writes <target>.speedscope.json (open it in https://www.speedscope.app) and prints each
process's top functions by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.cli import _simulate  # noqa: E402 - after the path is set
from gateway.simulate import simulate  # noqa: E402
from tests import brokers  # noqa: E402
from tests.mosquitto import Mosquitto  # noqa: E402

GATEWAY = str(ROOT / ".venv" / "bin" / "aes-gateway")


def record(py_spy: str, out: Path, command: list[str]) -> Path:
    subprocess.run([py_spy, "record", "--subprocesses", "--rate", "250", "--format", "speedscope",
                    "--output", str(out), "--", *command], check=True, capture_output=True)
    print(f"wrote {out} (open it in https://www.speedscope.app)")
    return out


def top(profile: Path, count: int = 12) -> None:
    """Own time per function in each process, from the speedscope file."""
    data = json.loads(profile.read_text())
    frames = data["shared"]["frames"]
    own: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for thread in data["profiles"]:
        pid = int(re.search(r"Process (\d+)", thread["name"]).group(1))  # type: ignore[union-attr]
        for stack, weight in zip(thread["samples"], thread["weights"], strict=True):
            if stack:
                frame = frames[stack[-1]]
                where = f"{Path(frame.get('file', '?')).name}:{frame.get('line', '?')}"
                own[pid][f"{frame['name']} ({where})"] += weight
    busiest = max(sum(c.values()) for c in own.values())
    for index, pid in enumerate(sorted(own)):
        counter = own[pid]
        total = sum(counter.values())
        if total < busiest / 20:
            continue  # multiprocessing's resource tracker
        print(f"  {'main' if index == 0 else 'parse worker'} (pid {pid}): {total:.1f} s sampled")
        for function, samples in counter.most_common(count):
            print(f"    {samples / total:6.1%}  {function}")


async def preload(topo: brokers.Topology, messages: int) -> None:
    sim = simulate(int(messages / 6.7) + 1, seed=5, bad_share=0.03, scenarios=False)
    await brokers.publish_simulated(topo, sim.messages)


def run_drained(py_spy: str, out: Path, work: Path, messages: int, sink: str) -> Path:
    topo = asyncio.run(brokers.declare())
    broker = Mosquitto(work) if sink == "mqtt" else None
    try:
        extra = ""
        if broker is not None:
            broker.start()
            extra = f'[[sinks]]\ntype = "mqtt"\nurl = "mqtt://127.0.0.1:{broker.port}"\n'
        toml = brokers.config_toml(topo, str(work / "g.db"), extra)
        if broker is not None:  # MQTT alone: drop the AMQP sink of the helper's config
            head, _, rest = toml.partition("[[sinks]]\ntype = \"amqp\"")
            toml = head + rest.split("[http]", 1)[1].join(["[http]", ""])
        toml = toml.replace("batch_size = 200", "batch_size = 1000").replace(
            "prefetch = 300", "prefetch = 1000")
        config = work / "gateway.toml"
        config.write_text(toml)
        asyncio.run(preload(topo, messages))
        return record(py_spy, out, [GATEWAY, "run", "--config", str(config), "--until-idle", "2"])
    finally:
        if broker is not None:
            broker.stop()
        asyncio.run(brokers.delete(topo))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", default=["replay", "amqp", "mqtt"],
                        choices=["replay", "amqp", "mqtt"])
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "profiles")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for target in args.targets:
        with tempfile.TemporaryDirectory(prefix=f"aes-profile-{target}-") as tmp:
            work = Path(tmp)
            out = args.out / f"{target}.speedscope.json"
            if target == "replay":
                _simulate(work / "in", int(args.messages / 6.7) + 1, 42, 0.03)
                profile = record(args.py_spy, out, [GATEWAY, "replay", str(work / "in"), "--store",
                                                str(work / "r.db"), "--output",
                                                str(work / "r.jsonl")])
            else:
                profile = run_drained(args.py_spy, out, work, args.messages, target)
            print(f"{target}:")
            top(profile)


if __name__ == "__main__":
    main()
