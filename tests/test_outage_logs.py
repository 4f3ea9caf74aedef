"""What the log says through a RabbitMQ restart: the gateway's own account of the outage, once
as it begins and once as it ends, and the AMQP client's retries once each, not every second.

Until stop 18 a restart of a few seconds wrote dozens of lines from aiormq and aio-pika, most
at error level (about 3 a connection a second, so some 2 700 in a 5-minute outage), and not
one line from the gateway itself, neither that a source was lost nor that it was back. A
graceful stop logged nothing either.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import aio_pika
import pytest

from adapters.amqp import AmqpSource, plain_connector
from gateway import config as cfg
from gateway import pipeline
from tests import brokers
from tests.conftest import CLI, ROOT
from tests.mosquitto import free_port


def ready(http: int, want: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if asyncio.run(brokers.readyz(http))[0] == want:
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def test_a_broker_restart_is_logged_once_as_it_begins_and_once_as_it_ends(
    tmp_path: Path,
) -> None:
    topo = asyncio.run(brokers.declare())
    http = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(brokers.config_toml(topo, str(tmp_path / "gateway.db")).replace(
        'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{http}"'))
    stderr = tmp_path / "stderr"
    broker_up = True
    try:
        with stderr.open("wb") as err:
            gateway = subprocess.Popen([*CLI, "run", "--config", str(config)], cwd=ROOT,
                                       env={**os.environ, "AES_GATEWAY_LOG_LEVEL": "INFO"},
                                       stderr=err)
            assert ready(http, 200, 30)
            time.sleep(6)  # the observer, looking every 5 s, has seen the sources connected
            brokers.rabbitmqctl("stop_app")
            broker_up = False
            assert ready(http, 503, 10)
            time.sleep(8)  # the observer looks every 5 s; the client retries every second
            brokers.rabbitmqctl("start_app")
            brokers.rabbitmqctl("await_startup")
            broker_up = True
            assert ready(http, 200, 30)
            time.sleep(6)  # one more look of the observer
            gateway.send_signal(signal.SIGTERM)
            assert gateway.wait(timeout=60) == 0
    finally:
        if not broker_up:
            brokers.rabbitmqctl("start_app")
            brokers.rabbitmqctl("await_startup")
        asyncio.run(brokers.delete(topo))
    lines = [json.loads(line) for line in stderr.read_text().splitlines()]
    library = Counter((line["logger"], line["level"], line["msg"]) for line in lines
                      if line["logger"].startswith(("aiormq", "aio_pika")))
    own = [(line["level"], line["msg"]) for line in lines
           if line["logger"].startswith("aes_gateway")]
    sources = [f"amqp:{topo.q22}", f"amqp:{topo.q30}"]

    assert library, "the client's own account of the connection loss is kept"
    assert max(library.values()) == 1, f"repeated library lines: {library.most_common(3)}"
    for source in sources:
        said = [(level, msg) for level, msg in own if source in msg]
        assert [level for level, msg in said
                if msg.startswith(f"source {source} disconnected")] == ["warning"]
        assert [level for level, msg in said
                if msg.startswith(f"source {source} connected again")] == ["info"]
    assert ("info", "SIGTERM: stopping; deciding what was delivered and letting the sinks "
                    "catch up") in own
    assert own[-1] == ("info", "gateway stopped")


def test_a_missing_mailbox_is_logged_as_it_begins_every_while_and_as_it_ends(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Until stop 19 each retry had its warning: with the pauses grown to 30 s, two lines a
    minute for each missing mailbox, for as long as it was missing."""
    monkeypatch.setattr(pipeline, "REMIND_EVERY_S", 2.5)  # 10 minutes in the service
    queue = f"aes-missing-{uuid.uuid4().hex[:8]}"

    async def scenario() -> bool:
        config = cfg.AmqpSource(url=brokers.AMQP_URL, queue=queue)
        connect = plain_connector(brokers.AMQP_URL, None, "test")
        source = AmqpSource(config, asyncio.Queue(), connect)
        stop = asyncio.Event()
        starting = asyncio.create_task(source.start(stop))
        await asyncio.sleep(5)  # tried at about 0, 0.5, 1.5 and 3.5 s; next at 7.5 s
        connection = await aio_pika.connect(brokers.AMQP_URL)
        try:
            admin = await connection.channel()
            await admin.declare_queue(queue)
            started = await asyncio.wait_for(starting, 15)
            await source.close()
            await admin.queue_delete(queue)
        finally:
            await connection.close()
        return started

    with caplog.at_level(logging.INFO, "aes_gateway.amqp"):
        assert asyncio.run(scenario())
    said = [r.getMessage() for r in caplog.records if r.name == "aes_gateway.amqp"]
    missing = [line for line in said if "does not exist" in line]
    assert len(missing) == 2, said  # as it began, and one reminder
    assert missing[0].startswith(f"mailbox {queue} does not exist; retrying")
    assert missing[1].startswith(f"mailbox {queue} does not exist, still, after ")
    ended = [line for line in said if line.startswith(f"mailbox {queue} opened after ")]
    assert len(ended) == 1, said
    attempts = int(ended[0].rsplit("(", 1)[1].split()[0])
    assert attempts >= 4 > len(missing)
