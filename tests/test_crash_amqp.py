"""The crash script in small form: SIGKILLs under publish load and a RabbitMQ restart."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_kills_and_a_broker_restart_lose_nothing_and_rename_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "bench/crash.py", "--cases", "80", "--kills", "5", "--rate", "400",
         "--restart-broker"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    print(figures)
    assert figures["kills"] >= 5
    assert figures["broker_restart_s"] is not None
    assert figures["lost"] == 0
    assert figures["renamed"] == 0
    assert figures["left_in_mailboxes"] == 0
    assert figures["message_id_is_event_id"]
    assert result.returncode == 0
