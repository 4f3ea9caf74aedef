"""The fault campaign in small form: every fault loses nothing and the gateway recovers alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_every_fault_row_loses_nothing_and_recovers(tmp_path: Path) -> None:
    table = tmp_path / "chaos.json"
    result = subprocess.run(
        [sys.executable, "bench/chaos.py", "--cases", "150", "--kills", "5",
         "--json", str(table)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )
    print(result.stdout)
    assert table.exists(), f"chaos.py wrote no table (exit {result.returncode}):\n" + (
        result.stderr[-3000:])
    rows = {row["fault"]: row for row in json.loads(table.read_text())}
    assert set(rows) == {"sigkill", "rabbitmq-restart", "mosquitto-restart", "disk-full",
                         "stalled-sink", "mosquitto-crash", "rabbitmq-alarm"}
    for row in rows.values():
        if row["fault"] == "disk-full" and row["messages"] == 0:
            continue  # no tmpfs can be mounted here (not root): the disk-full test says so
        assert row["expected"] > 0
        assert row["lost"] == 0, row
        assert row["unknown"] == 0, row
        assert row["out_amqp"] == row["out_mqtt"] == row["expected"], row
        assert row["recover_s"] is not None, row
    alarm_notes = " ".join(rows["rabbitmq-alarm"]["notes"])
    assert "/readyz after 12 s of alarm: 503" in alarm_notes, "a hanging sink is not ready"
    assert result.returncode == 0
