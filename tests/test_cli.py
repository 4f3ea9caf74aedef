"""The command line as a user meets it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli

FIXTURES = Path(__file__).parent / "fixtures"


def test_schema_is_generated_from_the_model() -> None:
    schema = json.loads(run_cli("schema").stdout)
    event = schema["$defs"]["CanonicalEvent"]
    assert set(event["properties"]) == {
        "schema", "event_id", "event_type", "category", "occurred_at", "case", "person",
        "decision_date", "certificate", "description", "provenance"}


def test_replay_writes_events_and_summary(tmp_path: Path) -> None:
    result = run_cli("replay", str(FIXTURES), "--summary", str(tmp_path / "summary.json"))
    lines = result.stdout.splitlines()
    assert [json.loads(line)["event_type"] for line in lines] == ["rejected", "case_linked"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {k: summary[k] for k in ("messages", "emitted", "duplicates", "quarantined")} == {
        "messages": 5, "emitted": 1, "duplicates": 4, "quarantined": 0}
    assert summary["quarantined_by_reason"] == {}


def test_missing_input_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("replay", str(tmp_path / "nowhere"), check=False)
    assert result.returncode == 2
    assert "nowhere" in result.stderr


def test_unwritable_store_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_cli("replay", str(FIXTURES), "--store", str(blocker / "s.db"), check=False)
    assert result.returncode == 2
    assert "cannot open store" in result.stderr


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
    deleted = json.loads(run_cli("purge", "--store", store, "--retention-days", "400").stdout)
    assert deleted == {"events": 0, "messages": 0, "quarantine": 0, "links": 0, "outbox": 2}
