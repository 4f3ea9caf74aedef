"""The canonical stream over MQTT with aiomqtt: QoS 1, not retained, relayed from the outbox."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from adapters.tls import client_context
from gateway.config import MqttSink as MqttConfig
from gateway.ports import OutboxRow

log = logging.getLogger("aes_gateway.mqtt")
T = TypeVar("T")


class RefusalsKeptClient(aiomqtt.Client):
    """An aiomqtt client that keeps the PUBACKs refusing a publish.

    An MQTT 5 broker refuses a QoS 1 publish with a failure reason code in its PUBACK
    (Mosquitto: "Not authorized" for a topic its ACL denies), and aiomqtt drops the code: the
    publish returns as if delivered. The sink checks `refused` after each batch. (MQTT 3.1.1
    has no such code: Mosquitto acknowledges a denied publish as if it were delivered.)
    aiomqtt's PUBACK callback is private; it is overridden here, and only here, and
    tests/test_mqtt_refused.py fails if it changes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refused: list[str] = []  # the reasons, since the sink last cleared it

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        if reason_code.is_failure:
            self.refused.append(str(reason_code))
        super()._on_publish(client, userdata, mid, reason_code, properties)


def disconnected(client: aiomqtt.Client) -> asyncio.Future[None]:
    """Done when the client's connection ends: an exception if the broker went away.

    aiomqtt keeps this future private, and has no public way to learn of a lost connection
    while publishing: a QoS 1 publish waits for its PUBACK until the client's timeout (10 s)
    even when the connection is already gone. It is read here, and only here; the version is
    pinned, and tests/test_mqtt_disconnect.py fails if it changes."""
    return client._disconnected


async def unless_disconnected(client: aiomqtt.Client, work: asyncio.Future[T]) -> T:
    """`work`'s result, or MqttError as soon as the client's connection is lost."""
    lost = disconnected(client)
    try:
        await asyncio.wait((work, lost), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not work.done():  # the connection is lost, or this task is cancelled
            work.cancel()
            await asyncio.wait((work,))  # no publish left waiting behind
        if not work.cancelled():
            work.exception()  # retrieved here, raised below (or the loss raised in its place)
    if lost.done() and (work.cancelled() or work.exception() is not None):
        reason = None if lost.cancelled() else lost.exception()
        raise aiomqtt.MqttError("the connection to the broker was lost") from reason
    return work.result()  # every PUBACK came; or the publishes' own error (a timeout)


class RefusedError(Exception):
    """The broker acknowledged a publish with a failure reason code."""


def topic(prefix: str, row: OutboxRow) -> str:
    """`<topic_prefix>/<municipality_code>/<event_type>`; `unknown` for an unknown kommune."""
    return f"{prefix}/{row.municipality_code or 'unknown'}/{row.event_type}"


class MqttSink:
    def __init__(self, config: MqttConfig, name: str) -> None:
        self.config = config
        self.name = name
        url = urlsplit(config.url)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (8883 if url.scheme == "mqtts" else 1883)
        self.username = unquote(url.username) if url.username else None
        self.password = unquote(url.password) if url.password else None
        self.tls = client_context(config.tls) if url.scheme == "mqtts" else None
        self.protocol = aiomqtt.ProtocolVersion.V5  # falls back to 3.1.1 if the broker says no
        self.identifier = f"aes-gateway-{uuid.uuid4().hex[:12]}"
        self._client: RefusalsKeptClient | None = None

    async def _connect(self) -> RefusalsKeptClient:
        if self._client is not None:
            return self._client
        for protocol in (self.protocol, aiomqtt.ProtocolVersion.V311):
            client = RefusalsKeptClient(
                self.host, self.port, username=self.username, password=self.password,
                identifier=self.identifier, protocol=protocol, tls_context=self.tls,
                max_inflight_messages=self.config.window, timeout=10,
            )
            client.pending_calls_threshold = self.config.window + 1  # a full window is normal
            try:
                await client.__aenter__()
            except aiomqtt.MqttCodeError as exc:
                if protocol is aiomqtt.ProtocolVersion.V5 and "protocol" in str(exc).lower():
                    continue  # an MQTT 3.1.1 broker: no user properties
                raise
            self.protocol = protocol
            self._client = client
            return client
        raise aiomqtt.MqttError(f"cannot connect to {self.host}:{self.port}")

    def _properties(self, row: OutboxRow) -> Properties | None:
        if self.protocol is not aiomqtt.ProtocolVersion.V5:
            return None
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.UserProperty = [("event_id", row.event_id)]
        properties.ContentType = "application/json"
        return properties

    async def send(self, rows: Sequence[OutboxRow]) -> None:
        """QoS 1: returns when the broker has acknowledged every row (PUBACK)."""
        try:
            client = await self._connect()
            client.refused.clear()
            await unless_disconnected(client, asyncio.gather(*(
                client.publish(topic(self.config.topic_prefix, row), row.body, qos=1,
                               retain=False, properties=self._properties(row))
                for row in rows
            )))
        except aiomqtt.MqttError:
            await self.close()  # reconnect on the next try; the relay backs off
            raise
        if client.refused:  # not delivered: the relay keeps the rows and tries again
            raise RefusedError(f"the broker refused {len(client.refused)} of {len(rows)} "
                               f"events: {client.refused[0]}")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            lost = disconnected(client)
            if lost.done() and not lost.cancelled() and lost.exception() is not None:
                log.warning("MQTT connection lost: %s", lost.exception(),
                            extra={"sink": self.name})
            try:
                await client.__aexit__(None, None, None)
            except aiomqtt.MqttError:
                log.info("MQTT connection already gone", extra={"sink": self.name})
