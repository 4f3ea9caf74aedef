"""Structured logs, CPR masked everywhere."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway import logs
from gateway.decide import Prepared, Result, prepare
from gateway.envelope import EnvelopeReader, oversized_said
from gateway.model import Outcome, RawMessage, Reason
from gateway.pipeline import QUARANTINE_LOG_FIRST, QuarantineLog
from tests.conftest import CLI, ROOT, run_cli

FIXTURES = Path(__file__).parent / "fixtures"


def test_log_lines_are_json_with_cpr_masked_in_message_fields_and_traces() -> None:
    stream = io.StringIO()
    logs.setup(stream)
    log = logging.getLogger("test")
    def fail() -> None:
        raise ValueError("bad CPR 1401851234 in record")

    try:
        fail()
    except ValueError:
        log.exception("failed for 140185-1234", extra={"cpr": "1401851234"})
    line = stream.getvalue().strip()
    entry = json.loads(line)
    assert entry["msg"] == "failed for 140185-****"
    assert entry["cpr"] == "140185-****"
    assert "140185-****" in entry["exc"]
    assert "1234" not in line.replace("140185-****", "")


def test_uuids_and_hashes_are_not_mistaken_for_cpr() -> None:
    text = "id 3f5e2a0c-6a51-4c1e-9f0e-123456789012 sha256:a1401851234b"
    assert logs.mask(text) == text


def test_the_size_of_an_oversized_message_is_not_masked_as_a_cpr() -> None:
    """A gigabyte has ten digits: until stop 22 the line said `push body of 107374-**** bytes`."""
    line = logs.mask(oversized_said("push body", 1_073_741_824, 16 * 2**20))
    assert line == ("push body of 1073.7 MB is over the limit; its first 16 MiB go to the "
                    "quarantine")


def test_a_full_replay_at_debug_logs_no_cpr(tmp_path: Path) -> None:
    run_cli("simulate", str(tmp_path / "in"), "--cases", "40", "--seed", "9")
    result = run_cli("replay", str(tmp_path / "in"), "--output", str(tmp_path / "out.jsonl"),
                     env_level="DEBUG")
    cprs = {json.loads(line)["person"]["cpr"]
            for line in (tmp_path / "out.jsonl").read_text().splitlines()}
    assert len(result.stderr.splitlines()) > 100  # DEBUG logged every message
    for cpr in cprs:
        assert not re.search(f"{cpr[:6]}-?{cpr[6:]}", result.stderr)


def test_an_unknown_log_level_is_said_not_silently_swallowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AES_GATEWAY_LOG_LEVEL", "LOUD")
    stream = io.StringIO()
    logs.setup(stream)
    line = json.loads(stream.getvalue().splitlines()[0])
    assert line["level"] == "warning"
    assert "AES_GATEWAY_LOG_LEVEL 'LOUD' is not a level" in line["msg"]
    assert logging.getLogger().level == logging.INFO


def test_a_library_repeating_itself_passes_once_a_minute_with_a_count() -> None:
    """aiormq and aio-pika log each reconnection attempt, about 3 lines a connection a second
    while a broker is away; before stop 18 a 5-minute outage wrote some 2 700 lines."""
    now = [0.0]
    repeats = logs.Repeats(every_s=60, clock=lambda: now[0])

    def record(name: str, msg: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord(name, level, "x.py", 1, msg, ("arg",), None)

    passed = []
    for second in range(150):
        now[0] = float(second)
        for name in ("aiormq.connection", "aio_pika.robust_connection"):
            passed += [r for r in [record(name, "error when creating transport: %r")]
                       if repeats.filter(r)]
    assert [(r.name, getattr(r, "repeated", 0)) for r in passed] == [
        ("aiormq.connection", 0), ("aio_pika.robust_connection", 0),
        ("aiormq.connection", 59), ("aio_pika.robust_connection", 59),
        ("aiormq.connection", 59), ("aio_pika.robust_connection", 59),
    ]
    # another template, another level, and the gateway's own loggers are not held back
    assert repeats.filter(record("aiormq.connection", "Unexpected connection close %s"))
    assert repeats.filter(record("aiormq.connection", "error when creating transport: %r",
                                 logging.WARNING))
    assert all(repeats.filter(record("aes_gateway.amqp", "cannot connect %s")) for _ in range(5))


def test_the_count_of_held_back_lines_is_in_the_json_line() -> None:
    stream = io.StringIO()
    logs.setup(stream)
    handler = logging.getLogger().handlers[0]
    repeats = next(f for f in handler.filters if isinstance(f, logs.Repeats))
    repeats._every_s = 0.0  # every line passes; the count of the one before is kept
    for _ in range(2):
        logging.getLogger("aiormq.connection").error("error when creating transport: %r", "x")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line.get("repeated") for line in lines] == [None, None]
    repeats._every_s = 3600.0
    for _ in range(3):
        logging.getLogger("aiormq.connection").error("Unexpected close %s", "y")
    repeats._every_s = 0.0
    logging.getLogger("aiormq.connection").error("Unexpected close %s", "y")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line.get("repeated") for line in lines[2:]] == [None, 2]


def test_a_status_line_stays_below_the_log_lines() -> None:
    """replay's progress bar on a terminal: until stop 18 each quarantined message's line was
    written into the middle of the bar, and the bar was lost among them."""
    stream = io.StringIO()
    logs.setup(stream)
    handler = logs.handler()
    assert handler is not None
    handler.status = lambda: "\r[####....] 4/8"
    logging.getLogger("aes_gateway.pipeline").warning("message quarantined")
    handler.status = None
    logging.getLogger("aes_gateway.pipeline").warning("after the bar")
    first, rest = stream.getvalue().split("\n", 1)
    assert first.startswith("\r\x1b[2K{")
    assert json.loads(first[len("\r\x1b[2K"):])["msg"] == "message quarantined"
    assert rest.startswith("\r[####....] 4/8{")
    assert json.loads(rest[len("\r[####....] 4/8"):].strip())["msg"] == "after the bar"


@pytest.mark.skipif(shutil.which("script") is None, reason="needs script(1) for a terminal")
def test_replay_on_a_terminal_keeps_its_bar_whole(tmp_path: Path) -> None:
    run_cli("simulate", str(tmp_path / "in"), "--cases", "200", "--seed", "4")
    command = (f"{CLI[0]} -m gateway.cli replay {tmp_path / 'in'} --output /dev/null")
    shown = subprocess.run(["script", "-qc", command, "/dev/null"], capture_output=True,
                           cwd=ROOT, timeout=120, check=True).stdout.decode()  # \r kept
    pieces = shown.replace("\r\n", "\n").replace("\r\x1b[2K", "\r").split("\r")
    lines = [p for p in pieces if p.strip()]
    assert any('"message quarantined"' in p for p in lines)
    # each line is either a whole bar or a whole log line: none is a bar with a log line in it
    bars = 0
    for piece in lines:
        for line in piece.splitlines():
            if line.startswith("["):
                assert re.fullmatch(r"\[[#.]{40}\] \d+/\d+", line), repr(line[:120])
                bars += 1
            else:
                json.loads(line)
    assert bars > 1


def _quarantined(count: int, reason: str) -> tuple[list[Prepared], list[Result]]:
    raw = RawMessage(b"<x/>", "file:x.xml", dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    batch = [prepare(raw, EnvelopeReader()) for _ in range(count)]
    results = [Result(f"k{i}", None, Outcome.QUARANTINED, reason=Reason(reason),
                      detail="d") for i in range(count)]
    return batch, results


def test_quarantined_messages_past_the_first_ten_a_minute_are_counted_not_logged() -> None:
    """Until stop 19 each quarantined message had its own line: 2 817 lines for a replay of
    100 000 simulated messages, some 140 000 for five million."""
    stream = io.StringIO()
    logs.setup(stream)
    now = [0.0]
    quarantine = QuarantineLog(first=10, every_s=60.0, clock=lambda: now[0])
    quarantine.note(*_quarantined(25, "not_xml"))
    quarantine.note(*_quarantined(3, "invalid_cpr"))
    now[0] = 30.0
    quarantine.note(*_quarantined(5, "not_xml"))
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    one_by_one = [line["reason"] for line in lines if line["msg"] == "message quarantined"]
    assert one_by_one == ["not_xml"] * 10 + ["invalid_cpr"] * 3
    assert [line["msg"] for line in lines if "held_back" not in line][10].startswith(
        "more messages quarantined as not_xml: counted")
    assert not any("held_back" in line for line in lines)  # its minute is not over
    now[0] = 61.0
    quarantine.close_due()  # the service's observer, with no batch coming
    quarantine.note(*_quarantined(2, "not_xml"))  # a new minute: logged one by one again
    quarantine.flush()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    counted = [line for line in lines if "held_back" in line]
    assert [(line["reason"], line["held_back"]) for line in counted] == [("not_xml", 20)]
    assert sum(line["msg"] == "message quarantined" for line in lines) == 15


def test_a_replay_logs_every_quarantined_message_one_way_or_the_other(tmp_path: Path) -> None:
    """Logged one by one or counted: the logs account for each message in the summary."""
    inbox = tmp_path / "in"
    run_cli("simulate", str(inbox), "--cases", "300", "--seed", "5", "--bad-share", "0.3")
    result = run_cli("replay", str(inbox), "--output", str(tmp_path / "out.jsonl"),
                     "--summary", str(tmp_path / "summary.json"), env_level="WARNING")
    summary = json.loads((tmp_path / "summary.json").read_text())
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    logged: dict[str, int] = {}
    for line in lines:
        if line["msg"] == "message quarantined" or "held_back" in line:
            logged[line["reason"]] = logged.get(line["reason"], 0) + line.get("held_back", 1)
    assert logged == summary["quarantined_by_reason"]
    assert max(logged.values()) > QUARANTINE_LOG_FIRST  # some were counted, not logged
    one_by_one = sum(line["msg"] == "message quarantined" for line in lines)
    assert one_by_one <= QUARANTINE_LOG_FIRST * len(logged) < summary["quarantined"]


def test_a_level_that_is_not_one_is_said_once_not_again_by_each_parse_worker(
    tmp_path: Path, simulated: tuple[Path, dict[str, object]]
) -> None:
    inbox, _ = simulated
    result = run_cli("replay", str(inbox), "--workers", "1", "--output",
                     str(tmp_path / "out.jsonl"), env_level="LOUD")
    said = [line for line in result.stderr.splitlines() if "is not a level" in line]
    assert len(said) == 1, said


def test_asyncio_repeating_itself_passes_once_a_minute() -> None:
    """Out of file descriptors, CPython 3.11's accept loop reports every failed accept through
    the loop's exception handler, 17 000 lines in 10 s in a probe at stop 20 (the push
    receiver now stays below the limit; this is the second line of defence)."""
    stream = io.StringIO()
    logs.setup(stream)

    async def storm() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(500):
            loop.call_exception_handler({
                "message": "socket.accept() out of system resource",
                "exception": OSError(24, "Too many open files")})

    asyncio.run(storm())
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["msg"] for line in lines if line["logger"] == "asyncio"] == [
        "socket.accept() out of system resource"]
