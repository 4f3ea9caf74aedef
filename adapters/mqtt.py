"""The canonical stream over MQTT with aiomqtt: QoS 1, not retained, relayed from the outbox."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapters.tls import client_context
from gateway.config import MqttSink as MqttConfig
from gateway.ports import OutboxRow

log = logging.getLogger("aes_gateway.mqtt")


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
        self._client: aiomqtt.Client | None = None

    async def _connect(self) -> aiomqtt.Client:
        if self._client is not None:
            return self._client
        for protocol in (self.protocol, aiomqtt.ProtocolVersion.V311):
            client = aiomqtt.Client(
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
            await asyncio.gather(*(
                client.publish(topic(self.config.topic_prefix, row), row.body, qos=1,
                               retain=False, properties=self._properties(row))
                for row in rows
            ))
        except aiomqtt.MqttError:
            await self.close()  # reconnect on the next try; the relay backs off
            raise

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.__aexit__(None, None, None)
            except aiomqtt.MqttError:
                log.info("MQTT connection already gone", extra={"sink": self.name})
