"""The command line as a user meets it."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CLI, ROOT, read_jsonl, run_cli
from tests.helpers import alive, parse_worker, push_to_jsonl, resource_tracker

FIXTURES = Path(__file__).parent / "fixtures"


def test_schema_is_generated_from_the_model() -> None:
    schema = json.loads(run_cli("schema").stdout)
    event = schema["$defs"]["CanonicalEvent"]
    assert set(event["properties"]) == {
        "schema", "event_id", "event_type", "category", "occurred_at", "case", "person",
        "decision_date", "certificate", "description", "provenance"}


def test_version_names_the_installed_release() -> None:
    """A bug report (an `internal_error`, say) needs it; until stop 19 there was no --version."""
    from importlib import metadata

    assert run_cli("--version").stdout == f"aes-gateway {metadata.version('aes-gateway')}\n"


def test_every_command_and_option_says_what_it_is_in_its_help() -> None:
    """Until stop 19 `--help` opened with the module's docstring for developers, and half the
    options (`purge --retention-days`, `report --format` ...) had no word nor default."""
    import argparse

    from gateway.cli_args import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    unexplained = [
        f"{name} {action.dest}"
        for name, command in commands.choices.items()
        for action in command._actions
        if not action.help and not action.choices and action.dest != "help"
    ]
    assert unexplained == []
    assert {a.dest for a in commands._choices_actions if a.help} == set(commands.choices)


def test_an_unexpected_failure_is_logged_as_json_with_the_cpr_masked() -> None:
    """Until stop 19 a bug's exception left main() as Python's plain traceback, with any CPR
    in its message as it was."""
    code = ("import sys, gateway.cli as c\n"
            "def fail(args): raise RuntimeError('record 1401851234 broke it')\n"
            "c._dispatch_at_once = fail\n"
            "sys.exit(c.main(['schema']))\n")
    result = subprocess.run([CLI[0], "-c", code], capture_output=True, text=True, cwd=ROOT,
                            timeout=60, check=False)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    logged = json.loads(line)
    assert logged["level"] == "critical"
    assert logged["msg"].startswith("aes-gateway schema failed; please report this line")
    assert "140185-****" in line
    assert "1401851234" not in line


def test_replay_writes_events_and_summary(tmp_path: Path) -> None:
    result = run_cli("replay", str(FIXTURES), "--summary", str(tmp_path / "summary.json"))
    lines = result.stdout.splitlines()
    assert [json.loads(line)["event_type"] for line in lines] == ["rejected", "case_linked"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {k: summary[k] for k in ("messages", "emitted", "duplicates", "quarantined")} == {
        "messages": 5, "emitted": 1, "duplicates": 4, "quarantined": 0}
    assert summary["quarantined_by_reason"] == {}


def test_replay_ends_with_a_line_of_counts_in_its_log(
    tmp_path: Path, simulated: tuple[Path, dict[str, object]]
) -> None:
    """Without --summary a replay said nothing at its end (stop 18 and before)."""
    inbox, key = simulated
    result = run_cli("replay", str(inbox), "--output", str(tmp_path / "out.jsonl"),
                     env_level="INFO")
    last = json.loads(result.stderr.splitlines()[-1])
    assert last["msg"].startswith("replay done: ")
    counts = {k: last[k] for k in ("messages", "emitted", "duplicates", "quarantined")}
    assert counts["messages"] == len(list(inbox.glob("*.xml")))
    assert counts["emitted"] == len(read_jsonl(tmp_path / "out.jsonl")) - key["case_links"]
    assert counts["messages"] == sum(v for k, v in counts.items() if k != "messages")
    assert last["seconds"] > 0


def test_the_summary_and_the_events_cannot_share_stdout(tmp_path: Path) -> None:
    """Until stop 19 the indented summary followed the events on stdout, and a consumer of
    the JSON Lines met a line it could not parse."""
    result = run_cli("replay", str(FIXTURES), "--summary", "-", check=False)
    assert result.returncode == 2
    assert "would share stdout" in result.stderr
    assert result.stdout == ""
    result = run_cli("replay", str(FIXTURES), "--summary", "-", "--output",
                     str(tmp_path / "out.jsonl"))
    assert json.loads(result.stdout)["messages"] == 5


def test_simulate_never_deletes_messages_it_did_not_write(tmp_path: Path) -> None:
    """simulate replaces an earlier simulation's files. Until stop 19 it deleted every *.xml
    in the directory it was given: a real capture too."""
    capture = tmp_path / "capture"
    capture.mkdir()
    (capture / "000001.xml").write_bytes(b"<real/>")
    result = run_cli("simulate", str(capture), "--cases", "5", check=False)
    assert result.returncode == 2
    assert "holds 1 *.xml files that simulate did not write" in result.stderr
    assert [p.name for p in capture.iterdir()] == ["000001.xml"]
    assert (capture / "000001.xml").read_bytes() == b"<real/>"
    run_cli("simulate", str(tmp_path / "sim"), "--cases", "20", "--seed", "1")
    first = len(list((tmp_path / "sim").glob("*.xml")))
    run_cli("simulate", str(tmp_path / "sim"), "--cases", "5", "--seed", "1")  # replaced
    assert 0 < len(list((tmp_path / "sim").glob("*.xml"))) < first


def test_missing_input_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("replay", str(tmp_path / "nowhere"), check=False)
    assert result.returncode == 2
    assert "nowhere" in result.stderr


@pytest.mark.parametrize("command", ["purge", "report", "quarantine"])
def test_a_command_on_a_store_that_is_not_there_says_so(tmp_path: Path, command: str) -> None:
    """A mistyped path: until stop 16 `purge` created an empty store there and reported that
    it had deleted nothing."""
    args = [command, *(["list"] if command == "quarantine" else []),
            "--store", str(tmp_path / "typo.db")]
    result = run_cli(*args, check=False)
    assert result.returncode == 2
    assert "no store at" in result.stderr
    assert not (tmp_path / "typo.db").exists()


def test_unwritable_store_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_cli("replay", str(FIXTURES), "--store", str(blocker / "s.db"), check=False)
    assert result.returncode == 2
    assert "cannot open store" in result.stderr


@pytest.mark.parametrize("store", ["not a database", "a newer schema"])
def test_a_store_that_cannot_be_used_is_a_clear_error_and_an_exit(
    tmp_path: Path, store: str
) -> None:
    """Until stop 16 a file that is not SQLite printed its error and then hung for ever: the
    connection's thread was never closed. A store of a later version was silently marked
    as this version's."""
    path = tmp_path / "s.db"
    if store == "not a database":
        path.write_text("these are not the bytes of an SQLite database\n")
    else:
        run_cli("replay", str(FIXTURES), "--store", str(path), "--output", os.devnull)
        with sqlite3.connect(path) as db:
            db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        db.close()
    result = run_cli("report", "--store", str(path), check=False, timeout=30)
    assert result.returncode == 2
    assert ("is not an aes-gateway store (not a SQLite database)" if store == "not a database"
            else "written by a newer aes-gateway (schema 99") in result.stderr


@pytest.mark.parametrize("command", ["report", "purge", "replay", "quarantine"])
@pytest.mark.parametrize("kind", ["text", "another application's SQLite database"])
def test_a_file_that_is_not_a_store_is_left_as_it_is(
    tmp_path: Path, command: str, kind: str
) -> None:
    """A `--store` naming some other file: until stop 19 it was made mode 0600 and given -wal
    and -shm files beside it, and another application's database got the gateway's tables."""
    path = tmp_path / "other.file"
    if kind == "text":
        path.write_text("notes\n")
    else:
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE users (name TEXT)")
        db.close()
    path.chmod(0o644)
    before = path.read_bytes()
    args = {"report": ["report"], "purge": ["purge"], "quarantine": ["quarantine", "list"],
            "replay": ["replay", str(FIXTURES), "--output", os.devnull]}[command]
    result = run_cli(*args, "--store", str(path), check=False, timeout=30)
    assert result.returncode == 2
    assert "not an aes-gateway store" in result.stderr
    assert "it was left as it is" in result.stderr
    assert path.read_bytes() == before
    assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.file"]


def test_run_exits_with_a_clear_error_when_a_source_cannot_start(tmp_path: Path) -> None:
    """A push port already taken: until stop 15 the gateway ran on without listening, and
    logged nothing about it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "gateway.toml"
        config.write_text(push_to_jsonl(tmp_path, port))
        result = run_cli("run", "--config", str(config), "--until-idle", "5", check=False)
    assert result.returncode == 2
    assert "address already in use" in result.stderr
    assert f"push:127.0.0.1:{port} could not start" in result.stderr  # the log line, too


def test_sigusr1_and_sigusr2_leave_the_gateway_running(tmp_path: Path) -> None:
    """A logrotate rule's `postrotate kill -USR1` (by habit) ended the gateway on the spot
    until stop 22: no graceful stop, exit -10. Now it is logged, and nothing else happens; the
    resource tracker, the gateway's other child, lives on too since stop 23."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "gateway.toml"
    config.write_text(push_to_jsonl(tmp_path, port))
    env = {**os.environ, "AES_GATEWAY_LOG_LEVEL": "INFO"}
    gateway = subprocess.Popen([*CLI, "run", "--config", str(config)], cwd=ROOT, env=env,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for _ in range(200):  # listening within a second or two
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        worker = parse_worker(gateway.pid)
        tracker = resource_tracker(gateway.pid)
        for signum in (signal.SIGUSR1, signal.SIGUSR2):  # to all its processes, as systemctl
            os.killpg(gateway.pid, signum)
            time.sleep(0.3)
        running = gateway.poll() is None
        worker_running, tracker_running = alive(worker), alive(tracker)
        gateway.send_signal(signal.SIGTERM)
        _, err = gateway.communicate(timeout=60)
    finally:
        gateway.kill()
    assert running
    assert worker_running
    assert tracker_running, "multiprocessing's resource tracker (until stop 23 it died)"
    assert gateway.returncode == 0
    assert all(line.startswith("{") for line in err.splitlines()), "no traceback at the stop"
    said = [json.loads(line)["msg"] for line in err.splitlines()]
    assert [m.split(":")[0] for m in said if "nothing to do" in m] == ["SIGUSR1", "SIGUSR2"]
    assert said[-1] == "gateway stopped"


@pytest.mark.parametrize("failure", ["http port taken", "sink file a directory"])
def test_run_exits_when_it_cannot_come_up(tmp_path: Path, failure: str) -> None:
    """Until stop 16 a failure after the store was opened (the metrics port taken by another
    gateway, a sink file that cannot be opened) printed its error and then hung for ever:
    the store's thread was never closed, and kept the process alive."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "gateway.toml"
        if failure == "http port taken":
            text = push_to_jsonl(tmp_path, 0) + f'[http]\nlisten = "127.0.0.1:{port}"\n'
        else:
            (tmp_path / "out.jsonl").mkdir()
            text = push_to_jsonl(tmp_path, 0)
        config.write_text(text)
        result = run_cli("run", "--config", str(config), check=False, timeout=30)
    assert result.returncode == 2
    assert ("address already in use" if failure == "http port taken"
            else f"sink jsonl:{tmp_path / 'out.jsonl'}: cannot open") in result.stderr
    if failure == "http port taken":  # said with the setting it is about
        assert f"[http] listen 127.0.0.1:{port}" in result.stderr


def test_a_file_name_that_is_not_utf8_is_quarantined_not_a_crash(tmp_path: Path) -> None:
    """A Latin-1 file name ("æøå" as single bytes) on bad input: until stop 15 the store could
    not encode the message's source, and replay died with a traceback."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    with open(os.path.join(os.fsencode(inbox), b"sag-\xe6\xf8\xe5.xml"), "wb") as bad:
        bad.write(b"<not xml")
    store = str(tmp_path / "g.db")
    summary = tmp_path / "summary.json"
    run_cli("replay", str(inbox), "--store", store, "--output", os.devnull,
            "--summary", str(summary))
    assert json.loads(summary.read_text())["quarantined_by_reason"] == {"not_xml": 1}
    listed = json.loads(run_cli("quarantine", "list", "--store", store).stdout)
    assert listed["source"] == "file:sag-\ufffd\ufffd\ufffd.xml"


def test_a_file_over_a_gigabyte_is_quarantined_not_the_end_of_the_replay(tmp_path: Path) -> None:
    """Until stop 22 replay read the file whole (2.3 GB of RSS for a 1.1 GB file) and its
    commit failed: SQLite keeps no value over 1 GB. Exit 2, and the messages beside it were
    not decided. Now its first 16 MiB are kept, as the live sources keep them."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    shutil.copy(FIXTURES / "v22-inline.xml", inbox / "a.xml")
    with open(inbox / "b.xml", "wb") as big:  # sparse: no gigabyte written to the disk
        big.write(b"<Haendelsesbesked>")
        big.truncate(1100 * 1024 * 1024)
    store, summary = str(tmp_path / "g.db"), tmp_path / "summary.json"
    run_cli("replay", str(inbox), "--store", store, "--output", os.devnull,
            "--summary", str(summary))
    counts = json.loads(summary.read_text())
    assert (counts["emitted"], counts["quarantined_by_reason"]) == (1, {"too_large": 1})
    with sqlite3.connect(store) as db:
        (body,) = db.execute("SELECT body FROM quarantine").fetchone()
    assert body.startswith(b"<Haendelsesbesked>")
    assert len(body) == 16 * 1024 * 1024


def test_replay_to_a_pipe_closed_early_ends_quietly(tmp_path: Path) -> None:
    """`replay --output - | head -1`: until stop 16 an error message and exit 2; now the
    quiet exit of any Unix tool whose reader has had enough (128 + SIGPIPE)."""
    run_cli("simulate", str(tmp_path / "in"), "--cases", "300", "--seed", "4")
    env = {**os.environ, "AES_GATEWAY_LOG_LEVEL": "ERROR"}
    replay = subprocess.Popen([*CLI, "replay", str(tmp_path / "in"), "--output", "-"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert replay.stdout is not None
    assert replay.stdout.readline().startswith(b'{"schema":"aes.case-event/1"')
    replay.stdout.close()
    _, errors = replay.communicate(timeout=60)
    assert replay.returncode == 141
    assert errors == b""


def test_simulate_writes_messages_and_an_answer_key(tmp_path: Path) -> None:
    run_cli("simulate", str(tmp_path / "out"), "--cases", "20", "--seed", "4")
    key = json.loads((tmp_path / "out" / "answer-key.json").read_text())
    assert key["messages"] == len(list((tmp_path / "out").glob("*.xml")))
    assert set(key["quarantined_by_reason"]) >= {"too_large", "forbidden_dtd", "bad_record"}


def test_quarantined_input_still_exits_zero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_bytes(b"<not really")
    result = run_cli("replay", str(bad), "--summary", "-", "--output", str(tmp_path / "o"))
    assert json.loads(result.stdout)["quarantined_by_reason"] == {"not_xml": 1}


def test_purge_command_reports_what_it_deleted(tmp_path: Path) -> None:
    store = str(tmp_path / "s.db")
    run_cli("replay", str(FIXTURES), "--store", store, "--output", str(tmp_path / "o"))
    replaced = [f"s.db.replaced-{stamp}" for stamp in ("20200101T000000Z", "20991231T000000Z")]
    for name in replaced:
        (tmp_path / name).write_bytes(b"")
    deleted = json.loads(run_cli("purge", "--store", store, "--retention-days", "400").stdout)
    assert deleted == {"events": 0, "messages": 0, "quarantine": 0, "links": 0, "outbox": 2,
                       "replaced_stores": [replaced[0]]}
    assert (tmp_path / replaced[1]).exists()


def test_what_the_purge_deletes_is_gone_from_the_store_file(tmp_path: Path) -> None:
    """Refused messages past the quarantine's retention, whole with their CPR numbers: deleted
    rows must not stay readable in free pages, nor be copied into every backup. (Debian's
    SQLite zeroes them by itself; the store now asks for it on every build.)"""
    inbox = tmp_path / "in"
    inbox.mkdir()
    for n in range(200):
        (inbox / f"{n:03}.xml").write_text(f"<not xml PURGED-{n:03} 0101801234")
    store = tmp_path / "g.db"
    run_cli("replay", str(inbox), "--store", str(store), "--output", os.devnull)
    with sqlite3.connect(store) as db:
        db.execute("UPDATE quarantine SET received_at = 0")
        db.execute("UPDATE messages SET received_at = 0")
    db.close()
    assert b"PURGED-199" in store.read_bytes()
    deleted = json.loads(run_cli("purge", "--store", str(store)).stdout)
    assert deleted["quarantine"] == 200
    left = b"".join(p.read_bytes() for p in tmp_path.glob("g.db*") if p.is_file())
    assert b"PURGED-" not in left
    assert b"0101801234" not in left


def test_demo_reports_the_overlap_and_each_reason_under_the_quarantine(tmp_path: Path) -> None:
    """`make demo`'s report, from the demo's own files: the figures are the replay's, and every
    quarantine reason is listed right under the quarantined count, adding up to it."""
    result = run_cli("demo", "--workdir", str(tmp_path / "demo"), "--cases", "80")
    lines = result.stdout.splitlines()
    assert lines[-1] == "Matches the simulator's answer key: yes"
    summary = _summary_of(tmp_path / "demo")
    overlap = lines.index("Version overlap (AES case events)")
    assert [int(line.split(":")[1].split()[0]) for line in lines[overlap + 1 : overlap + 4]] == [
        summary["overlap"]["both"], summary["overlap"]["only_2_2"], summary["overlap"]["only_3_0"]]
    quarantined = next(i for i, line in enumerate(lines) if line.startswith("  quarantined "))
    under = itertools.takewhile(lambda line: line.startswith("    "), lines[quarantined + 1 :])
    reasons = {line.split(":")[0].strip(): int(line.split(":")[1]) for line in under}
    assert reasons == summary["quarantined_by_reason"]
    assert sum(reasons.values()) == int(lines[quarantined].split(":")[1]) > 0


def _summary_of(workdir: Path) -> dict[str, Any]:
    """The summary of the demo's store and input, as `replay --summary` writes it."""
    out = workdir / "again"
    run_cli("replay", str(workdir / "in"), "--close-windows", "--output", str(out / "c.jsonl"),
            "--summary", str(out / "summary.json"))
    return dict(json.loads((out / "summary.json").read_text()))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "TERM"])
def test_an_interrupted_replay_says_how_to_go_on_and_goes_on(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """Ctrl-C reaches every process of the command. Until stop 18 the parse worker died of
    it mid-batch and its KeyboardInterrupt was logged as an error with a traceback; SIGTERM
    ended the process on the spot, leaking the worker's semaphores, with no word."""
    run_cli("simulate", str(tmp_path / "in"), "--cases", "1500", "--seed", "5")
    out, store = tmp_path / "out.jsonl", tmp_path / "s.db"
    replay = [*CLI, "replay", str(tmp_path / "in"), "--store", str(store), "--output", str(out)]
    env = {**os.environ, "AES_GATEWAY_LOG_LEVEL": "ERROR"}
    process = subprocess.Popen(replay, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    for _ in range(600):
        if out.exists() and out.stat().st_size > 0:
            break
        time.sleep(0.01)
    if signum == signal.SIGINT:
        os.killpg(process.pid, signum)  # as a terminal does: the whole process group
    else:
        process.send_signal(signum)  # as `kill` does: the command's own process
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, stderr
    assert stderr.strip() == "aes-gateway: interrupted: every message decided so far is " \
        "stored; run the same command again to go on from there"
    first = len(read_jsonl(out))
    run_cli(*replay[len(CLI):])  # the same command again
    ids = [event["event_id"] for event in read_jsonl(out)]
    assert 0 < first < len(ids), "interrupted midway, then finished"
    assert len(ids) == len(set(ids)), "nothing twice"
    fresh = tmp_path / "fresh.jsonl"
    run_cli("replay", str(tmp_path / "in"), "--output", str(fresh))
    assert sorted(ids) == sorted(event["event_id"] for event in read_jsonl(fresh))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "TERM"])
def test_a_command_that_decides_nothing_stops_at_once(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """`simulate` ran inside the event loop: Ctrl-C was held until it had finished (asyncio
    cancels the main task, which a long computation never gives the chance)."""
    process = subprocess.Popen([*CLI, "simulate", str(tmp_path / "big"), "--cases", "100000"],
                               cwd=ROOT, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # started, far from done
    process.send_signal(signum)
    started = time.monotonic()
    _, stderr = process.communicate(timeout=120)
    assert time.monotonic() - started < 3
    assert process.returncode in (-signum, 128 + signum)
    assert "interrupted" not in stderr
    shutil.rmtree(tmp_path / "big", ignore_errors=True)  # whatever it wrote before the stop


def test_an_interrupted_replay_without_a_store_says_there_is_nothing_to_go_on_from(
    tmp_path: Path,
) -> None:
    """Its temporary store is gone with it: 'run the same command again to go on' was wrong."""
    run_cli("simulate", str(tmp_path / "in"), "--cases", "1500", "--seed", "5")
    out = tmp_path / "out.jsonl"
    process = subprocess.Popen([*CLI, "replay", str(tmp_path / "in"), "--output", str(out)],
                               cwd=ROOT, env={**os.environ, "AES_GATEWAY_LOG_LEVEL": "ERROR"},
                               stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if out.exists() and out.stat().st_size > 0:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert "without --store the store was a temporary one" in stderr
