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
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

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
