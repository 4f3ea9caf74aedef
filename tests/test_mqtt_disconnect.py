"""The MQTT sink learns at once that its broker went away, instead of at the publish timeout.

aiomqtt leaves a QoS 1 publish waiting for its PUBACK until the client's timeout (10 s) even
when the connection is already gone; the sink watches aiomqtt's private disconnect future for
that (`adapters.mqtt.disconnected`). These tests run against our own Mosquitto, restarted for
real, and fail if an aiomqtt upgrade changes that future.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from adapters.mqtt import MqttSink, disconnected
from gateway.config import MqttSink as MqttConfig
from gateway.ports import OutboxRow
from tests.mosquitto import Collector, Mosquitto

PREFIX = "aes/test-disconnect"


def _rows(first: int, count: int) -> list[OutboxRow]:
    return [OutboxRow(seq, f"event-{seq}", "101", "case_change", "reported", b"{}")
            for seq in range(first, first + count)]


def _unretrieved(loop: asyncio.AbstractEventLoop) -> list[dict[str, Any]]:
    """Collects what the loop reports as never retrieved (futures dropped with an error)."""
    reports: list[dict[str, Any]] = []

    def handler(_: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if "never retrieved" in str(context.get("message", "")):
            reports.append(context)

    loop.set_exception_handler(handler)
    return reports


def test_the_disconnect_future_is_pending_while_connected_and_fails_when_the_broker_goes(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()

    async def scenario() -> tuple[bool, bool, BaseException | None]:
        sink = MqttSink(MqttConfig(url=f"mqtt://127.0.0.1:{broker.port}"), "mqtt")
        await sink.send(_rows(1, 3))
        assert sink._client is not None  # connected by the send
        lost = disconnected(sink._client)
        pending_while_connected = not lost.done()
        await asyncio.to_thread(broker.stop)
        await asyncio.wait_for(asyncio.wait((lost,)), 5)
        error = lost.exception()
        await sink.close()
        return pending_while_connected, lost.done(), error

    try:
        pending, done, error = asyncio.run(scenario())
    finally:
        broker.stop()
    assert pending, "not done while the connection is up"
    assert done, "done once the broker is gone"
    assert isinstance(error, aiomqtt.MqttError), "an unexpected disconnection is an error"


def test_a_broker_lost_while_publishes_wait_fails_the_send_at_once_and_the_next_reconnects(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()

    def crash() -> None:
        """The broker dies (SIGKILL) while it holds our publishes unanswered (SIGSTOP)."""
        assert broker.proc is not None
        broker.proc.kill()
        broker.proc.wait()
        broker.proc = None

    async def scenario() -> tuple[str, list[str], list[dict[str, Any]]]:
        reports = _unretrieved(asyncio.get_running_loop())
        sink = MqttSink(MqttConfig(url=f"mqtt://127.0.0.1:{broker.port}",
                                   topic_prefix=PREFIX), "mqtt")
        await sink.send(_rows(1, 5))
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGSTOP)
        sending = asyncio.create_task(sink.send(_rows(6, 5)))
        await asyncio.sleep(0.3)
        assert not sending.done(), "waiting for PUBACKs from a frozen broker"
        await asyncio.to_thread(crash)
        with pytest.raises(aiomqtt.MqttError) as failed:
            await sending  # without the watch: "Operation timed out", at the 10 s timeout
        await asyncio.to_thread(broker.start)
        collector = Collector(broker.port, f"{PREFIX}/#")
        listening = asyncio.create_task(collector.run())
        await collector.ready()
        await sink.send(_rows(6, 5))  # what the relay does next: the same rows again
        await sink.close()
        for _ in range(100):
            if len(collector.messages) >= 5:
                break
            await asyncio.sleep(0.05)
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        gc.collect()  # a future dropped with its error unread is reported now
        await asyncio.sleep(0)
        ids = sorted(dict(m.properties.UserProperty)["event_id"]  # type: ignore[union-attr]
                     for m in collector.messages)
        return str(failed.value), ids, reports

    try:
        message, received, reports = asyncio.run(scenario())
    finally:
        broker.stop()
    assert message == "the connection to the broker was lost"
    assert received == sorted(f"event-{seq}" for seq in range(6, 11))
    assert reports == [], "no error left unread behind the sink"
