"""The push receiver's connections: idle ones closed, at most `max_connections` open, and the
open-files limit raised, so that many connections cannot starve the gateway of descriptors.

Found by a probe at stop 20: under systemd's default soft limit of 1 024 open files, 1 100 idle
connections (aiohttp kept each for an hour) left the receiver unable to accept, and CPython's
accept loop logged 17 000 errors in 10 s, more every second.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import CLI, ROOT
from tests.helpers import push_to_jsonl
from tests.test_push import PUSH_BODY, free_port, status_code

SYSTEMD_DEFAULT = (1024, 1024)  # soft and hard: as if the hard limit left nothing to raise


def gateway(workdir: Path, port: int, limits: tuple[int, int], extra: str = "", http: str = "",
            ) -> subprocess.Popen[bytes]:
    config = workdir / "g.toml"
    config.write_text(push_to_jsonl(workdir, port, extra) + (f"[http]\n{http}" if http else ""))
    return subprocess.Popen(
        [*CLI, "run", "--config", str(config)], cwd=ROOT,
        env={**os.environ, "AES_GATEWAY_LOG_LEVEL": "INFO"}, stdout=subprocess.DEVNULL,
        stderr=(workdir / "gateway.log").open("wb"),
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limits))


def connect_when_up(port: int) -> socket.socket:
    deadline = time.monotonic() + 10
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def push(port: int) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=PUSH_BODY, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own
        return status_code(response.read().decode())


def closed_by_server(connection: socket.socket) -> bool:
    try:
        return connection.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def log_lines(workdir: Path) -> list[dict[str, object]]:
    text = (workdir / "gateway.log").read_text()
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def room_for_clients(count: int) -> None:
    """This test process's own open-files limit raised for `count` client sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 200
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"this process may open {hard} files, and the test needs {wanted}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def flood(port: int, count: int) -> int:
    """Holds `count` connections to `port` open, sending nothing, for 3 s; returns how many
    of them the gateway left open."""
    held: list[socket.socket] = []
    try:
        held.append(connect_when_up(port))
        for _ in range(count - 1):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(3)  # the idle timeout passes; those over the limit were closed at once
        for connection in held:
            connection.settimeout(0.01)
        return sum(not closed_by_server(connection) for connection in held)
    finally:
        for connection in held:
            connection.close()


def check_log(workdir: Path, limit: int, count: int) -> None:
    lines = log_lines(workdir)
    errors = [line for line in lines if line["level"] in ("error", "critical")]
    assert errors == [], errors[:3]
    refusals = [line for line in lines if "refused" in str(line["msg"])]
    assert len(refusals) == 2, "the first at once, the rest counted in a line at the stop"
    refused = sum(int(line["refused"]) for line in refusals)  # type: ignore[call-overload]
    # How many are refused depends on how fast the gateway accepts while the flood comes: once
    # (stop 24, `make test` on a busy machine) 10 of 1 100 at a limit of 16, so no lower bound
    # but one.
    assert 0 < refused <= count - limit, "the idle ones closed meanwhile made room for others"
    assert len(lines) < 30


def test_many_idle_connections_neither_starve_nor_flood_the_gateway(tmp_path: Path) -> None:
    room_for_clients(1100)  # and the gateway's 1 024 within this process's hard limit
    port = free_port()
    process = gateway(tmp_path, port, SYSTEMD_DEFAULT, "idle_seconds = 1\nmax_connections = 64")
    try:
        still_open = flood(port, 1100)
        answered = push(port)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert still_open == 0, "every connection closed: over the limit, or idle"
    assert answered == 20
    check_log(tmp_path, 64, 1100)


def test_the_metrics_port_is_held_to_the_same_limits(tmp_path: Path) -> None:
    """The metrics and health port shares the gateway's descriptors with the push receiver;
    set to listen beyond loopback for Prometheus, it met the same 1 100 connections."""
    room_for_clients(1100)
    port, metrics_port = free_port(), free_port()
    process = gateway(tmp_path, port, SYSTEMD_DEFAULT, http=(
        f'listen = "127.0.0.1:{metrics_port}"\nidle_seconds = 1\nmax_connections = 16\n'))
    try:
        still_open = flood(metrics_port, 1100)
        url = f"http://127.0.0.1:{metrics_port}/healthz"
        with urllib.request.urlopen(url, timeout=10) as response:
            alive = json.loads(response.read())
        answered = push(port)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert still_open == 0, "every connection closed: over the limit, or idle"
    assert alive == {"status": "alive"}
    assert answered == 20
    check_log(tmp_path, 16, 1100)


def test_the_open_files_limit_is_raised_to_the_hard_limit(tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # a child may not go above it
    hard = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if hard <= 256:
        pytest.skip(f"the hard limit here, {hard}, leaves nothing to raise")
    port = free_port()
    process = gateway(tmp_path, port, (256, hard))
    try:
        connect_when_up(port).close()
        limits = Path(f"/proc/{process.pid}/limits").read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)
    open_files = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert open_files.split()[3:5] == [str(hard), str(hard)]
    starting = next(line for line in log_lines(tmp_path) if line["msg"] == "gateway starting")
    assert starting["open_files_limit"] == hard
