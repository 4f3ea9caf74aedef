"""One process at a time decides into a store. Until stop 16 a second `aes-gateway run` on the
same store ran alongside the first: both relayed the same outbox, and every event reached
the sinks twice (1 976 lines for 988 events in the probe)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from adapters.sqlite import Store, StoreError
from tests.conftest import CLI, ROOT, run_cli
from tests.helpers import push_to_jsonl

FIXTURES = Path(__file__).parent / "fixtures"


def test_a_claimed_store_refuses_a_second_claim_but_not_a_reader(tmp_path: Path) -> None:
    async def scenario() -> None:
        first = await Store.open(tmp_path / "g.db", claim=True)
        in_use = rf"in use by another aes-gateway \(pid {os.getpid()}\)"
        with pytest.raises(StoreError, match=in_use):
            await Store.open(tmp_path / "g.db", claim=True)
        async with await Store.open(tmp_path / "g.db") as reader:
            assert [page async for page in reader.quarantined_pages()] == []
        await first.close()
        async with await Store.open(tmp_path / "g.db", claim=True):  # free again
            pass

    asyncio.run(scenario())
    assert (tmp_path / "g.db.lock").stat().st_mode & 0o777 == 0o600


def test_a_second_gateway_or_replay_on_a_running_gateways_store_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(push_to_jsonl(tmp_path, 0) + '[http]\nlisten = "127.0.0.1:0"\n')
    env = {**os.environ, "AES_GATEWAY_LOG_LEVEL": "ERROR"}
    running = subprocess.Popen([*CLI, "run", "--config", str(config)], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = tmp_path / "g.db.lock"
        deadline = time.monotonic() + 30
        while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.read_text().strip() == str(running.pid)
        store = str(tmp_path / "g.db")
        second = run_cli("run", "--config", str(config), check=False, timeout=30)
        replay = run_cli("replay", str(FIXTURES / "v30-inline.xml"), "--store", store,
                         "--output", os.devnull, check=False, timeout=30)
        for refused in (second, replay):
            assert refused.returncode == 2
            assert f"in use by another aes-gateway (pid {running.pid})" in refused.stderr
        assert run_cli("quarantine", "list", "--store", store).returncode == 0  # reads
        assert running.poll() is None
    finally:
        running.send_signal(signal.SIGTERM)
        running.wait(timeout=30)
    run_cli("replay", str(FIXTURES / "v30-inline.xml"), "--store", store, "--output", os.devnull)
