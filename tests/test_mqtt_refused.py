"""A broker that refuses the events (an ACL without write access) does not make them count as
delivered: the MQTT sink stalls, and delivers everything once the broker accepts again.

An MQTT 5 broker refuses a QoS 1 publish with a failure reason code in its PUBACK; aiomqtt
drops that code, so until stop 15 the sink marked refused events as sent, and they were lost
to every MQTT consumer. The sink now reads the code (`adapters.mqtt.RefusalsKeptClient`,
overriding a private aiomqtt callback); these tests fail if an aiomqtt upgrade changes it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from adapters.mqtt import MqttSink, RefusedError
from adapters.runtime import run
from gateway import config as cfg
from gateway.config import MqttSink as MqttConfig
from gateway.ports import OutboxRow
from gateway.simulate import simulate
from tests import brokers
from tests.conftest import read_jsonl
from tests.mosquitto import Collector, Mosquitto, free_port

READ_ALL = "topic read #\n"
WRITE_NOTHING = READ_ALL
WRITE_ALLOWED = READ_ALL + "topic write allowed/#\n"


def _rows(count: int) -> list[OutboxRow]:
    return [OutboxRow(seq, f"event-{seq}", "101", "case_change", "reported", b"{}")
            for seq in range(1, count + 1)]


def _event_ids(collector: Collector) -> set[str]:
    return {json.loads(m.payload)["event_id"] for m in collector.messages}  # type: ignore[arg-type]


def test_a_refused_publish_raises_and_an_accepted_one_does_not(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path, acl=WRITE_ALLOWED)
    broker.start()

    async def scenario() -> tuple[str, int]:
        collector = Collector(broker.port, "#")
        listening = asyncio.create_task(collector.run())
        await collector.ready()
        refused = MqttSink(MqttConfig(url=f"mqtt://127.0.0.1:{broker.port}",
                                      topic_prefix="denied"), "mqtt-denied")
        accepted = MqttSink(MqttConfig(url=f"mqtt://127.0.0.1:{broker.port}",
                                       topic_prefix="allowed"), "mqtt-allowed")
        try:
            with pytest.raises(RefusedError) as error:
                await refused.send(_rows(3))
            await accepted.send(_rows(3))
            await asyncio.sleep(0.5)
        finally:
            await refused.close()
            await accepted.close()
            listening.cancel()
        return str(error.value), len(collector.messages)

    try:
        message, collected = asyncio.run(scenario())
    finally:
        broker.stop()
    assert message == "the broker refused 3 of 3 events: Not authorized"
    assert collected == 3  # the accepted ones only


def test_refused_events_wait_in_the_outbox_until_the_broker_accepts_them(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path, acl=WRITE_NOTHING)
    broker.start()
    sim = simulate(30, 36, bad_share=0.0, scenarios=False)
    expected = sim.canonical_events()
    http = free_port()

    async def scenario() -> dict[str, object]:
        topo = await brokers.declare()
        stop = asyncio.Event()
        collector = Collector(broker.port, "aes/#")
        listening = asyncio.create_task(collector.run())
        await collector.ready()
        seen: dict[str, object] = {}
        try:
            config = cfg.parse(brokers.config_toml(topo, str(tmp_path / "g.db")).replace(
                'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{http}"') + f"""
[[sinks]]
type = "mqtt"
url = "mqtt://127.0.0.1:{broker.port}"
topic_prefix = "aes"
[[sinks]]
type = "jsonl"
path = "{tmp_path / 'out.jsonl'}"
""")
            service = asyncio.create_task(run(config, stop=stop))
            await brokers.publish_simulated(topo, sim.messages)
            for _ in range(300):  # every event out on the other sinks
                out = tmp_path / "out.jsonl"
                if out.exists() and len(read_jsonl(out)) >= expected:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            status, body = await brokers.readyz(http)
            seen["while refused"] = (status, body["sinks_stalled"], len(collector.messages))
            async with aiohttp.ClientSession() as session:
                for _ in range(100):  # the gauges are refreshed every 5 s
                    async with session.get(f"http://127.0.0.1:{http}/metrics") as scrape:
                        stalled_gauges = [line for line in (await scrape.text()).splitlines()
                                          if line.startswith("aes_gateway_sink_stalled{")]
                    if any(line.endswith(" 1.0") for line in stalled_gauges):
                        break
                    await asyncio.sleep(0.1)
                seen["gauges"] = stalled_gauges
            broker.reload(READ_ALL + "topic write aes/#\n")
            for _ in range(200):
                if len(_event_ids(collector)) >= expected:
                    break
                await asyncio.sleep(0.1)
            seen["accepted"] = len(_event_ids(collector))
            stop.set()
            await service
        finally:
            listening.cancel()
            await brokers.delete(topo)
        return seen

    try:
        seen = asyncio.run(scenario())
    finally:
        broker.stop()
    status, stalled, collected = seen["while refused"]  # type: ignore[misc]
    assert (status, collected) == (503, 0)
    assert [name for name in stalled if name.startswith("mqtt")] == stalled != []
    assert seen["accepted"] == expected
    gauges = {line.split('"')[1]: line.rsplit(" ", 1)[1]
              for line in seen["gauges"]}  # type: ignore[attr-defined]
    assert gauges.pop(f"mqtt:aes@mqtt://127.0.0.1:{broker.port}") == "1.0"
    assert len(gauges) == 3  # the AMQP sink's two relays and the JSON Lines sink: not stalled
    assert set(gauges.values()) == {"0.0"}
