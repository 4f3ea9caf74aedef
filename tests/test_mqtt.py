"""The canonical stream over MQTT, against our own Mosquitto; several sinks at once."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import ssl
from pathlib import Path

import trustme

from adapters.runtime import run
from gateway import config as cfg
from gateway.simulate import simulate
from tests import brokers
from tests.conftest import read_jsonl
from tests.mosquitto import Collector, Mosquitto

PREFIX = "aes/case-events"


def _sources(topo: brokers.Topology) -> str:
    return f"""
[[sources]]
type = "amqp"
url = "{brokers.AMQP_URL}"
queue = "{topo.q22}"
[[sources]]
type = "amqp"
url = "{brokers.AMQP_URL}"
queue = "{topo.q30}"
[http]
listen = "127.0.0.1:0"
"""


async def _load(topo: brokers.Topology, cases: int, seed: int) -> int:
    """Publishes simulated traffic; returns how many canonical events it should give."""
    sim = simulate(cases, seed, bad_share=0.0, scenarios=False)
    await brokers.publish_simulated(topo, sim.messages)
    return sim.canonical_events()


def test_every_event_arrives_once_with_its_topic_payload_and_event_id(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()

    async def scenario() -> tuple[Collector, int]:
        topo = await brokers.declare()
        collector = Collector(broker.port, f"{PREFIX}/#")
        listening = asyncio.create_task(collector.run())
        await collector.ready()
        try:
            keyed = await _load(topo, 60, 31)
            await run(cfg.parse(f"""
                [store]
                path = "{tmp_path / 'g.db'}"
                [[sinks]]
                type = "mqtt"
                url = "mqtt://127.0.0.1:{broker.port}"
                [[sinks]]
                type = "jsonl"
                path = "{tmp_path / 'out.jsonl'}"
                {_sources(topo)}"""), until_idle=1.0)
            await asyncio.sleep(0.5)
        finally:
            listening.cancel()
            await brokers.delete(topo)
        return collector, keyed

    try:
        collector, keyed = asyncio.run(scenario())
    finally:
        broker.stop()
    expected = read_jsonl(tmp_path / "out.jsonl")
    assert len(expected) == keyed
    got = {json.loads(m.payload)["event_id"]: m for m in collector.messages}  # type: ignore[arg-type]
    assert len(collector.messages) == len(got) == len(expected), "each event exactly once"
    for event in expected:
        message = got[str(event["event_id"])]
        person = event["person"]
        assert isinstance(person, dict)
        assert str(message.topic) == (
            f"{PREFIX}/{person['municipality_code'] or 'unknown'}/{event['event_type']}")
        assert json.loads(message.payload) == event  # type: ignore[arg-type]
        assert message.qos == 1
        assert not message.retain
        assert message.properties is not None
        assert ("event_id", event["event_id"]) in message.properties.UserProperty


def test_mosquitto_stopped_mid_stream_loses_nothing(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()

    async def scenario() -> tuple[set[str], int]:
        topo = await brokers.declare()
        collector = Collector(broker.port, f"{PREFIX}/#")
        listening = asyncio.create_task(collector.run())
        await collector.ready()
        stop = asyncio.Event()
        try:
            expected = await _load(topo, 150, 32)
            config = cfg.parse(f"""
                [store]
                path = "{tmp_path / 'g.db'}"
                batch_size = 50
                [[sinks]]
                type = "mqtt"
                url = "mqtt://127.0.0.1:{broker.port}"
                window = 20
                {_sources(topo)}""")
            service = asyncio.create_task(run(config, stop=stop))
            while len(collector.messages) < 50:  # noqa: ASYNC110 - polls the collector
                await asyncio.sleep(0.01)
            await asyncio.to_thread(broker.stop)  # mid-stream
            await asyncio.sleep(2)
            await asyncio.to_thread(broker.start)
            for _ in range(600):
                if len({json.loads(m.payload)["event_id"] for m in collector.messages}) >= expected:  # type: ignore[arg-type]
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await service
        finally:
            listening.cancel()
            await brokers.delete(topo)
        return {json.loads(m.payload)["event_id"] for m in collector.messages}, expected  # type: ignore[arg-type]

    try:
        ids, expected = asyncio.run(scenario())
    finally:
        broker.stop()
    assert len(ids) == expected


def test_amqp_and_mqtt_sinks_together_with_mqtt_down(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)

    async def scenario() -> tuple[int, set[str], int]:
        topo = await brokers.declare()
        stop = asyncio.Event()
        collector = Collector(broker.port, f"{PREFIX}/#")
        # The collector's persistent session first: when MQTT returns, the gateway may publish
        # before the collector is back, and a session that did not exist would miss those.
        await asyncio.to_thread(broker.start)
        listening = asyncio.create_task(collector.run())
        await collector.ready()
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        await asyncio.to_thread(broker.stop)  # the MQTT sink is down from the start
        try:
            expected = await _load(topo, 60, 33)
            config = cfg.parse(f"""
                [store]
                path = "{tmp_path / 'g.db'}"
                [[sinks]]
                type = "mqtt"
                url = "mqtt://127.0.0.1:{broker.port}"
                [[sinks]]
                type = "amqp"
                url = "{brokers.AMQP_URL}"
                exchange = "{topo.exchange}"
                quarantine_exchange = "{topo.quarantine_exchange}"
                {_sources(topo)}""")
            service = asyncio.create_task(run(config, stop=stop))
            for _ in range(400):  # the AMQP sink is not held up by the dead MQTT sink
                if await brokers.depth(topo.events_queue) >= expected:
                    break
                await asyncio.sleep(0.05)
            on_amqp = await brokers.depth(topo.events_queue)
            await asyncio.to_thread(broker.start)  # MQTT returns: it catches up
            listening = asyncio.create_task(collector.run())
            for _ in range(600):
                if len(collector.messages) >= expected:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await service
            listening.cancel()
        finally:
            await brokers.delete(topo)
        ids = {json.loads(m.payload)["event_id"] for m in collector.messages}  # type: ignore[arg-type]
        return on_amqp, ids, expected

    try:
        on_amqp, ids, expected = asyncio.run(scenario())
    finally:
        broker.stop()
    assert on_amqp == expected
    assert len(ids) == expected


def test_pseudonymised_and_omitted_cpr(tmp_path: Path) -> None:
    async def scenario() -> None:
        topo = await brokers.declare()
        try:
            await _load(topo, 20, 34)
            sinks = "".join(f"""
                [[sinks]]
                type = "jsonl"
                path = "{tmp_path / mode}.jsonl"
                cpr = "{mode}"
                cpr_secret = "kommunens-hemmelighed"
                """ for mode in ("full", "pseudonymised", "omitted"))
            await run(cfg.parse(f"""
                [store]
                path = "{tmp_path / 'g.db'}"
                {sinks}
                {_sources(topo)}"""), until_idle=1.0)
        finally:
            await brokers.delete(topo)

    asyncio.run(scenario())
    full, pseudo, omitted = (read_jsonl(tmp_path / f"{m}.jsonl")
                             for m in ("full", "pseudonymised", "omitted"))
    assert len(full) == len(pseudo) == len(omitted) > 0
    for a, b, c in zip(full, pseudo, omitted, strict=True):
        cpr = a["person"]["cpr"]  # type: ignore[index]
        assert isinstance(cpr, str)
        assert len(cpr) == 10
        assert b["person"]["cpr"] == hmac.new(  # type: ignore[index]
            b"kommunens-hemmelighed", cpr.encode(), hashlib.sha256).hexdigest()
        assert c["person"]["cpr"] is None  # type: ignore[index]
        assert {k: v for k, v in a.items() if k != "person"} == {
            k: v for k, v in c.items() if k != "person"}


def test_mqtts_with_a_test_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = ca.issue_cert("127.0.0.1")
    server.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    broker = Mosquitto(tmp_path, tls={"ca": str(tmp_path / "ca.pem"),
                                      "cert": str(tmp_path / "cert.pem"),
                                      "key": str(tmp_path / "key.pem")})
    broker.start()
    client_tls = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))

    async def scenario() -> int:
        topo = await brokers.declare()
        collector = Collector(broker.port, f"{PREFIX}/#", client_tls)
        listening = asyncio.create_task(collector.run())
        await collector.ready()
        try:
            expected = await _load(topo, 10, 35)
            await run(cfg.parse(f"""
                [store]
                path = "{tmp_path / 'g.db'}"
                [[sinks]]
                type = "mqtt"
                url = "mqtts://127.0.0.1:{broker.port}"
                [sinks.tls]
                ca_file = "{tmp_path / 'ca.pem'}"
                {_sources(topo)}"""), until_idle=1.0)
            await asyncio.sleep(0.5)
        finally:
            listening.cancel()
            await brokers.delete(topo)
        assert len(collector.messages) == expected
        return len(collector.messages)

    try:
        assert asyncio.run(scenario()) > 0
    finally:
        broker.stop()
