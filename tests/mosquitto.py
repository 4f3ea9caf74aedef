"""Our own Mosquitto instances for tests: free ports, TLS with a test CA, stop and start."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import signal
import socket
import subprocess
import time
from pathlib import Path

import aiomqtt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    def __init__(
        self, workdir: Path, tls: dict[str, str] | None = None, acl: str | None = None
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        # run as us: mosquitto started as root would switch to its own user, which cannot
        # read a test's private temporary directory
        conf = [f"user {getpass.getuser()}", f"listener {self.port} 127.0.0.1",
                "allow_anonymous true",
                "persistence true", f"persistence_location {workdir}/",
                "max_inflight_messages 1000", "max_queued_messages 100000"]
        if tls:
            conf += [f"cafile {tls['ca']}", f"certfile {tls['cert']}", f"keyfile {tls['key']}"]
        self.acl = workdir / "acl"
        if acl is not None:  # Mosquitto's acl_file: which topics anonymous clients may use
            self.acl.write_text(acl)
            conf.append(f"acl_file {self.acl}")
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(conf) + "\n")

    def start(self) -> None:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port),
                                                                        timeout=0.2):
                return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def reload(self, acl: str) -> None:
        """A new ACL, read by Mosquitto on SIGHUP."""
        assert self.proc is not None, "start() first"
        self.acl.write_text(acl)
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # graceful: it saves the persistent sessions
            self.proc.wait(timeout=10)
            self.proc = None


def _session_expiry() -> object:
    """MQTT 5: keep the session (and its queued QoS 1 messages) while disconnected."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600
    return properties


class Collector:
    """A subscriber with a persistent session: QoS 1 messages wait for it across restarts."""

    def __init__(self, port: int, topic: str, tls_context: object = None) -> None:
        self.port = port
        self.topic = topic
        self.tls_context = tls_context
        self.messages: list[aiomqtt.Message] = []
        self.subscribed = asyncio.Event()

    async def ready(self) -> None:
        await asyncio.wait_for(self.subscribed.wait(), 10)

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.port, identifier="aes-test-collector",
                    tls_context=self.tls_context,  # type: ignore[arg-type]
                    protocol=aiomqtt.ProtocolVersion.V5,
                    clean_start=False,  # type: ignore[arg-type]
                    properties=_session_expiry(),
                ) as client:
                    await client.subscribe(self.topic, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        self.messages.append(message)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)
