"""Crash safety: replay killed with SIGKILL midway, then rerun: every event out, once named."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from gateway.cli import _simulate
from tests.conftest import CLI, ROOT, read_jsonl, run_cli
from tests.helpers import children, parse_worker


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _gone(pid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.split(") ", 1)[1].startswith("Z"):  # a zombie: dead, awaiting its reaper
            return True
        time.sleep(0.05)
    return False


ORPHANS: list[int] = []


def _kill_midway(args: list[str], out: Path, after_lines: int) -> bool:
    """Start a replay, SIGKILL it once `after_lines` more lines are out; True if it was killed.
    Worker processes it started are recorded, to check that none outlives it."""
    start = _lines(out)
    env = {**os.environ, "AES_GATEWAY_LOG_LEVEL": "ERROR"}
    proc = subprocess.Popen([*CLI, *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if _lines(out) >= start + after_lines:
            workers = children(proc.pid)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            ORPHANS.extend(w for w in workers if not _gone(w))
            return True
        time.sleep(0.005)
    proc.wait()
    return False


def test_sigkill_midway_then_rerun_loses_nothing_and_names_nothing_twice(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    _simulate(inbox, cases=1500, seed=5, bad_share=0.03)
    store, out = tmp_path / "crash.db", tmp_path / "crash.jsonl"
    args = ["replay", str(inbox), "--store", str(store), "--output", str(out),
            "--batch-size", "40"]
    kills = sum(_kill_midway(args, out, after_lines=600) for _ in range(3))
    assert kills >= 1, "the replay finished before it could be killed: give it more input"
    assert ORPHANS == [], "worker processes outlived the killed replay"
    run_cli(*args)

    run_cli("replay", str(inbox), "--store", str(tmp_path / "clean.db"),
            "--output", str(tmp_path / "clean.jsonl"))
    clean = {e["event_id"]: e for e in read_jsonl(tmp_path / "clean.jsonl")}
    crashed = read_jsonl(out)
    by_id = {e["event_id"]: e for e in crashed}
    assert by_id.keys() == clean.keys()  # every event is out, and none under a second id
    for event_id, event in by_id.items():
        assert (event["event_type"], event["occurred_at"], event["case"]) == (
            clean[event_id]["event_type"], clean[event_id]["occurred_at"],
            clean[event_id]["case"])
    repeats = len(crashed) - len(by_id)
    print(f"{kills} kills: {len(by_id)} events out, {repeats} repeated with the same id")


def test_quarantine_replay_killed_midway_loses_no_quarantined_message(tmp_path: Path) -> None:
    """Until stop 16 `quarantine replay` deleted every quarantined message first and decided
    them afterwards: killed in between, the rest were in neither place."""
    inbox = tmp_path / "in"
    _simulate(inbox, cases=1500, seed=6, bad_share=0.03)
    store, out = tmp_path / "q.db", tmp_path / "q.jsonl"
    run_cli("replay", str(inbox), "--store", str(store), "--output", str(tmp_path / "none.jsonl"),
            "--max-bytes", "200")  # every message refused as too large
    refused = len(run_cli("quarantine", "list", "--store", str(store)).stdout.splitlines())
    retry = ["quarantine", "replay", "--store", str(store), "--max-bytes", "1048576",
             "--output", str(out)]
    assert _kill_midway(retry, out, after_lines=300), "it finished before it could be killed"
    left = len(run_cli("quarantine", "list", "--store", str(store)).stdout.splitlines())
    assert 0 < left < refused
    run_cli(*retry)

    run_cli("replay", str(inbox), "--store", str(tmp_path / "clean.db"),
            "--output", str(tmp_path / "clean.jsonl"), "--summary", str(tmp_path / "s.json"))
    clean = {e["event_id"] for e in read_jsonl(tmp_path / "clean.jsonl")}
    assert {e["event_id"] for e in read_jsonl(out)} == clean
    still = [json.loads(line) for line in
             run_cli("quarantine", "list", "--store", str(store)).stdout.splitlines()]
    assert len(still) == json.loads((tmp_path / "s.json").read_text())["quarantined"]
    names = {f"file:{path.name}" for path in inbox.glob("*.xml")}
    assert {row["source"] for row in still} <= names  # refused again: still where it came from


def test_a_parse_worker_killed_midway_leaves_the_replay_whole(tmp_path: Path) -> None:
    """The kernel's OOM killer taking the parse worker: until stop 22 the replay ended with
    exit 1 and a traceback, as for a bug in the gateway. Now this process parses the rest."""
    inbox = tmp_path / "in"
    _simulate(inbox, cases=1500, seed=6, bad_share=0.03)
    out = tmp_path / "killed.jsonl"
    env = {**os.environ, "AES_GATEWAY_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [*CLI, "replay", str(inbox), "--store", str(tmp_path / "killed.db"), "--output",
         str(out), "--workers", "1", "--batch-size", "200"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = None
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and killed is None and time.monotonic() < deadline:
            if _lines(out) >= 500:
                killed = parse_worker(proc.pid)
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.005)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()  # a replay that hung must not outlive the test
    assert killed is not None, "the replay finished before its worker could be killed"
    assert proc.returncode == 0, err[-2000:]
    assert "a parse worker died" in err

    run_cli("replay", str(inbox), "--store", str(tmp_path / "clean.db"),
            "--output", str(tmp_path / "clean.jsonl"))
    clean = [e["event_id"] for e in read_jsonl(tmp_path / "clean.jsonl")]
    assert [e["event_id"] for e in read_jsonl(out)] == clean  # all of them, once, in order
