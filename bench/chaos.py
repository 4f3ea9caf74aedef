"""Fault campaign against the real RabbitMQ and Mosquitto on this machine: one table row per fault.

    .venv/bin/python bench/chaos.py [--cases 300] [--kills 20] [--seed 5] [--only NAME ...]

Each row starts afresh (new mailboxes, store and Mosquitto) and runs `aes-gateway run` as a
process with two AMQP mailboxes in and two sinks out (the AMQP topic exchange and MQTT), while
simulated transition traffic is published at a steady rate. The fault begins a third of the way
into the publishing and lasts until the publishing is over, so the backlog builds up under load:

  sigkill             the gateway is killed with SIGKILL (--kills times, at random moments)
                      and started again each time
  rabbitmq-restart    `rabbitmqctl stop_app` / `start_app`: both mailboxes and the AMQP sink go
  mosquitto-restart   Mosquitto stopped (SIGTERM) and started again: the MQTT sink goes
  disk-full           the store's file system (a 64 MiB tmpfs) filled to the last byte, then freed
  stalled-sink        Mosquitto frozen with SIGSTOP (connections open, nothing answered), SIGCONT
  mosquitto-crash     Mosquitto frozen for 0.5 s with the sink's publishes unanswered, then killed
                      (SIGKILL) and started again at once, mid-stream: the sink must notice the
                      lost connection, not wait out its publish timeout (10 s)
  rabbitmq-alarm      the gateway frozen for 1 s (a backlog builds in the mailboxes), then a
                      RabbitMQ memory alarm for 12 s (the high watermark set near 0, then back to
                      what it was): every publisher blocks, so the AMQP sink hangs instead of
                      failing while the gateway works off the backlog; /readyz must say so (the
                      note gives what it answered)

Columns: messages published; events expected (the simulator's answer key: emitted events and
case links); distinct event ids seen on each sink; lost (expected ids never seen on a sink, the
worse sink); repeats (deliveries of an id already seen, per sink: at-least-once after a fault);
resume (seconds from the fault's end until the next event comes out: the gateway works again, by
itself); recover (seconds from the fault's end, or from the last message published if that is
later, until every expected event is out on both sinks and both mailboxes are empty; a row
that does not recover alone within --recover-limit seconds gets one restart, to count what it
lost, and says so). Exit 1 when any row lost an event, emitted an id the key does not know of,
or did not recover alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aio_pika

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.simulate import Simulator, simulate  # noqa: E402
from tests import brokers  # noqa: E402
from tests.brokers import rabbitmqctl  # noqa: E402
from tests.faults import fill, small_disk  # noqa: E402
from tests.mosquitto import Collector, Mosquitto, free_port  # noqa: E402

CLI = [sys.executable, "-m", "gateway.cli"]
TOPIC_PREFIX = "chaos/case-events"
FAULTS = ("sigkill", "rabbitmq-restart", "mosquitto-restart", "disk-full", "stalled-sink",
          "mosquitto-crash", "rabbitmq-alarm")


@dataclass
class Row:
    fault: str
    messages: int = 0
    expected: int = 0
    out_amqp: int = 0
    out_mqtt: int = 0
    lost: int = 0
    unknown: int = 0
    repeats_amqp: int = 0
    repeats_mqtt: int = 0
    resume_s: float | None = None
    recover_s: float | None = None
    notes: list[str] = field(default_factory=list)


class AmqpCollector:
    """Reads the canonical exchange's queue, surviving a broker restart."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.ids: list[str] = []

    async def run(self) -> None:
        while True:
            try:
                connection = await aio_pika.connect_robust(brokers.AMQP_URL)
                async with connection:
                    channel = await connection.channel()
                    await channel.set_qos(prefetch_count=500)
                    queue = await channel.get_queue(self.queue)
                    async with queue.iterator() as messages:
                        async for message in messages:
                            self.ids.append(json.loads(message.body)["event_id"])
                            await message.ack()
            except (aio_pika.exceptions.AMQPError, ConnectionError, OSError, RuntimeError):
                await asyncio.sleep(0.5)


class Gateway:
    """`aes-gateway run` as a separate process, so that it can be killed for real."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "AES_GATEWAY_LOG_LEVEL": os.environ.get("CHAOS_LOG_LEVEL", "ERROR")}
        with (self.config.parent / "gateway.log").open("ab") as log:
            self.proc = subprocess.Popen([*CLI, "run", "--config", str(self.config)], cwd=ROOT,
                                         env=env, stdout=subprocess.DEVNULL, stderr=log)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait()
            self.proc = None


async def first_event_after(ended: float, count: Callable[[], int]) -> float:
    """Seconds from `ended` until `count()` grows past what it was when the fault ended."""
    before = count()
    while count() <= before:  # noqa: ASYNC110 - polls the collectors
        await asyncio.sleep(0.02)
    return round(time.monotonic() - ended, 2)


Fault = Callable[[asyncio.Task[None]], Awaitable[None]]


async def run_row(name: str, args: argparse.Namespace, workdir: Path) -> Row:
    row = Row(name)
    sim = simulate(args.cases, args.seed, bad_share=0.03, scenarios=False)
    row.messages = len(sim.messages)
    row.expected = sim.canonical_events()
    with small_disk(workdir / "disk", "64m") as disk:
        if name == "disk-full" and disk is None:
            row.notes.append("cannot mount a tmpfs here: row not run")
            row.messages = row.expected = 0
            return row
        store_dir = disk if disk is not None else workdir
        mosquitto = Mosquitto(workdir)
        mosquitto.start()
        topo = await brokers.declare()
        try:
            await _campaign(name, args, row, sim, topo, mosquitto, store_dir, workdir)
        finally:
            if mosquitto.proc is not None:
                mosquitto.proc.send_signal(signal.SIGCONT)
            mosquitto.stop()
            await brokers.delete(topo)
    return row


async def _campaign(name: str, args: argparse.Namespace, row: Row, sim: Simulator,
                    topo: brokers.Topology, mosquitto: Mosquitto, store_dir: Path,
                    workdir: Path) -> None:
    rng = random.Random(args.seed)
    config, http = workdir / "gateway.toml", free_port()
    config.write_text(brokers.config_toml(topo, str(store_dir / "gateway.db"), f"""
[[sinks]]
type = "mqtt"
url = "mqtt://127.0.0.1:{mosquitto.port}"
topic_prefix = "{TOPIC_PREFIX}"
max_backlog = 2000
""").replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{http}"'))
    streams = brokers.streams(topo, sim.messages)
    mqtt, amqp = Collector(mosquitto.port, f"{TOPIC_PREFIX}/#"), AmqpCollector(topo.events_queue)
    collectors = [asyncio.create_task(mqtt.run()), asyncio.create_task(amqp.run())]
    await mqtt.ready()
    gateway = Gateway(config)
    gateway.start()
    watched = (lambda: len(mqtt.messages)) if "mosquitto" in name or "sink" in name else (
        lambda: len(amqp.ids))  # the faulted sink: MQTT for a Mosquitto fault
    resumed: asyncio.Task[float] | None = None

    def fault_over() -> None:
        nonlocal resumed
        if resumed is not None:
            resumed.cancel()
        resumed = asyncio.create_task(first_event_after(time.monotonic(), watched))

    rate = args.rate
    if name == "sigkill":  # slow enough that every kill falls while messages still arrive
        rate = min(rate, len(streams) * 2 / 3 / (args.kills * 0.7) * 0.8)
    published = [0]
    publisher = asyncio.create_task(brokers.publish_steadily(streams, rate, published))
    try:
        while published[0] < len(streams) // 3:  # noqa: ASYNC110 - the fault begins a third in
            await asyncio.sleep(0.02)
        if name == "sigkill":
            kills = 0
            while kills < args.kills:
                await asyncio.sleep(rng.uniform(0.2, 1.2))
                gateway.kill()
                gateway.start()
                kills += 1
                fault_over()
            row.notes.append(f"{kills} kills at {rate:.0f} msg/s, the last with "
                             f"{len(streams) - published[0]} messages still to come")
        elif name == "rabbitmq-restart":
            started = time.monotonic()
            await asyncio.to_thread(rabbitmqctl, "stop_app")
            await asyncio.sleep(1.0)
            await asyncio.to_thread(rabbitmqctl, "start_app")
            fault_over()
            row.notes.append(f"broker away {time.monotonic() - started:.1f} s")
            await publisher
        elif name == "mosquitto-restart":
            await asyncio.to_thread(mosquitto.stop)
            await publisher
            await asyncio.to_thread(mosquitto.start)
            fault_over()
        elif name == "disk-full":
            filler = store_dir / "filler"
            await asyncio.to_thread(fill, filler)
            await publisher
            held = sum([await brokers.depth(q) for q in (topo.q22, topo.q30)])
            row.notes.append(f"{held} messages held in the mailboxes while full")
            await asyncio.to_thread(filler.unlink)
            fault_over()
        elif name == "mosquitto-crash":
            await asyncio.sleep(2.0)  # mid-stream
            assert mosquitto.proc is not None  # noqa: S101 - started above
            mosquitto.proc.send_signal(signal.SIGSTOP)
            await asyncio.sleep(0.5)
            mosquitto.proc.kill()
            await asyncio.to_thread(mosquitto.proc.wait)
            mosquitto.proc = None
            await asyncio.to_thread(mosquitto.start)
            fault_over()
        elif name == "rabbitmq-alarm":
            watermark = await asyncio.to_thread(
                rabbitmqctl, "eval", "vm_memory_monitor:get_vm_memory_high_watermark().")
            assert gateway.proc is not None  # noqa: S101 - started above
            gateway.proc.send_signal(signal.SIGSTOP)  # a backlog in the mailboxes to work off
            await asyncio.sleep(1.0)
            try:
                await asyncio.to_thread(rabbitmqctl, "set_vm_memory_high_watermark", "0.0000001")
                gateway.proc.send_signal(signal.SIGCONT)
                await asyncio.sleep(12.0)
                status, body = await brokers.readyz(http)
                row.notes.append(f"/readyz after 12 s of alarm: {status}, "
                                 f"stalled {body['sinks_stalled']}")
            finally:
                await asyncio.to_thread(rabbitmqctl, "set_vm_memory_high_watermark", watermark)
            fault_over()
        elif name == "stalled-sink":
            assert mosquitto.proc is not None  # noqa: S101 - started above
            mosquitto.proc.send_signal(signal.SIGSTOP)
            await publisher
            await asyncio.sleep(2.0)
            mosquitto.proc.send_signal(signal.SIGCONT)
            fault_over()
        await publisher
        cleared = time.monotonic()

        async def all_out(limit: float) -> bool:
            started = time.monotonic()
            while time.monotonic() - started < limit:
                mqtt_ids = {json.loads(m.payload)["event_id"] for m in mqtt.messages}  # type: ignore[arg-type]
                if (len(set(amqp.ids)) >= row.expected and len(mqtt_ids) >= row.expected
                        and [await brokers.depth(q) for q in (topo.q22, topo.q30)] == [0, 0]):
                    return True
                await asyncio.sleep(0.1)
            return False

        if await all_out(args.recover_limit):
            row.recover_s = round(time.monotonic() - cleared, 1)
        else:  # did not recover alone: does a restart hand everything back (lost counts it)?
            gateway.kill(signal.SIGTERM)
            gateway.start()
            restored = await all_out(args.recover_limit)
            row.notes.append("recovered only after a restart" if restored
                             else "not recovered, even after a restart")
        await asyncio.sleep(1.0)  # late repeats count too
        if resumed is not None and resumed.done():
            row.resume_s = resumed.result()
    finally:
        publisher.cancel()
        if resumed is not None:
            resumed.cancel()
        gateway.kill(signal.SIGTERM)
        for task in collectors:
            task.cancel()
        # let them unsubscribe and close before the row's Mosquitto goes away
        await asyncio.gather(*collectors, return_exceptions=True)
    amqp_list = amqp.ids
    mqtt_list = [json.loads(m.payload)["event_id"] for m in mqtt.messages]  # type: ignore[arg-type]
    row.out_amqp, row.out_mqtt = len(set(amqp_list)), len(set(mqtt_list))
    row.repeats_amqp = len(amqp_list) - row.out_amqp
    row.repeats_mqtt = len(mqtt_list) - row.out_mqtt
    row.lost = max(0, row.expected - min(row.out_amqp, row.out_mqtt))
    row.unknown = max(0, max(row.out_amqp, row.out_mqtt) - row.expected)


def print_table(rows: list[Row]) -> None:
    header = (f"{'fault':18} {'messages':>8} {'expected':>8} {'out amqp':>8} {'out mqtt':>8} "
              f"{'lost':>5} {'repeats amqp/mqtt':>17} {'resume s':>8} {'recover s':>9}  notes")
    print(header)
    print("-" * len(header))
    for r in rows:
        recover = "-" if r.recover_s is None else f"{r.recover_s:.1f}"
        resume = "-" if r.resume_s is None else f"{r.resume_s:.2f}"
        repeats = f"{r.repeats_amqp}/{r.repeats_mqtt}"
        print(f"{r.fault:18} {r.messages:8} {r.expected:8} {r.out_amqp:8} {r.out_mqtt:8} "
              f"{r.lost:5} {repeats:>17} {resume:>8} {recover:>9}  {'; '.join(r.notes)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--rate", type=float, default=400.0, help="messages/s published")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--recover-limit", type=float, default=120.0)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--logs", type=Path, help="keep each row's gateway log here")
    parser.add_argument("--only", nargs="*", choices=FAULTS, default=list(FAULTS))
    args = parser.parse_args()
    rows = []
    for name in args.only:
        with tempfile.TemporaryDirectory(prefix=f"aes-chaos-{name}-") as tmp:
            rows.append(asyncio.run(run_row(name, args, Path(tmp))))
            if args.logs is not None:
                args.logs.mkdir(parents=True, exist_ok=True)
                shutil.copy(Path(tmp) / "gateway.log", args.logs / f"{name}.log")
        print(f"{name}: done", file=sys.stderr)
    print_table(rows)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    bad = [r for r in rows if r.lost or r.unknown or (r.recover_s is None and r.messages)]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
