"""Metrics: the values match the simulator's answer key; no CPR or case id in any label."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from zoneinfo import ZoneInfo

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import run_cli

DENMARK = ZoneInfo("Europe/Copenhagen")


def samples(path: Path) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            found[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return found


def by(metric: dict[tuple[tuple[str, str], ...], float], label: str) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for labels, value in metric.items():
        totals[dict(labels)[label]] += int(value)
    return {k: v for k, v in totals.items() if v}


def test_replayed_metrics_match_the_answer_key(
    tmp_path: Path, simulated: tuple[Path, dict[str, object]]
) -> None:
    inbox, key = simulated
    metrics = tmp_path / "metrics.prom"
    run_cli("replay", str(inbox), "--output", str(tmp_path / "o.jsonl"), "--metrics",
            str(metrics), "--close-windows")
    found = samples(metrics)
    outcomes = by(found["aes_gateway_messages_total"], "outcome")
    assert outcomes == {"emitted": key["emitted"], "duplicate": key["duplicates"],
                        "quarantined": key["quarantined"]}
    assert by(found["aes_gateway_quarantined_total"], "reason") == key["quarantined_by_reason"]
    assert by(found["aes_gateway_duplicates_total"], "kind") == key["duplicates_by_kind"]
    assert by(found["aes_gateway_matches_total"], "method") == key["matches_by_method"]
    assert by(found["aes_gateway_pair_outcomes_total"], "outcome") == {
        k: v for k, v in key["pair_outcomes"].items() if v}  # type: ignore[attr-defined]
    lag_count = sum(found["aes_gateway_cross_version_lag_seconds_count"].values())
    assert lag_count == key["duplicates_by_kind"]["cross_version"]  # type: ignore[index]
    assert sum(found["aes_gateway_conflicts_total"].values()) == key["conflicts"]
    assert sum(found["aes_gateway_case_links_total"].values()) == key["case_links"]
    versions = by(found["aes_gateway_messages_total"], "version")
    assert set(versions) <= {"2.2", "3.0", "unknown"}


def test_no_cpr_or_case_id_in_any_label(
    tmp_path: Path, simulated: tuple[Path, dict[str, object]]
) -> None:
    inbox, _ = simulated
    metrics = tmp_path / "metrics.prom"
    run_cli("replay", str(inbox), "--output", str(tmp_path / "o.jsonl"), "--metrics",
            str(metrics))
    for name, metric in samples(metrics).items():
        for labels in metric:
            for _, value in labels:
                assert not re.search(r"\d{6}-?\d{4}|AES-\d{4}|^\d{5,}$", value), (name, value)


def test_migration_report_adds_up_to_the_overlap(
    tmp_path: Path, simulated: tuple[Path, dict[str, object]]
) -> None:
    import json

    inbox, key = simulated
    store = tmp_path / "s.db"
    run_cli("replay", str(inbox), "--store", str(store), "--output", str(tmp_path / "o"))
    rows = json.loads(run_cli("report", "--store", str(store), "--format", "json").stdout)
    overlap = key["overlap"]
    assert isinstance(overlap, dict)
    assert sum(r["twins"] for r in rows) == overlap["both"]
    assert sum(r["only_2_2"] for r in rows) == overlap["only_2_2"]
    assert sum(r["only_3_0"] for r in rows) == overlap["only_3_0"]
    assert {r["month"][:4] for r in rows} <= {"2022", "2023"}  # the simulated span
    assert all(r["lag_p50_s"] <= r["lag_p99_s"] for r in rows if r["twins"])
    table = run_cli("report", "--store", str(store)).stdout
    assert table.splitlines()[0].split()[:2] == ["month", "kommune"]
    # for a spreadsheet: the same cells, a lag that is not there an empty field
    import csv

    sheet = list(csv.DictReader(run_cli("report", "--store", str(store), "--format",
                                        "csv").stdout.splitlines()))
    assert sheet == [{k: "" if v is None else str(v) for k, v in row.items()} for row in rows]
    assert any(not row["twins"] for row in rows)  # a cell without a lag is among them


def test_migration_report_equals_a_count_over_every_event(
    tmp_path: Path, simulated: tuple[Path, dict[str, object]]
) -> None:
    """The report is counted and sorted by SQLite (stop 16: holding every lag took 1.5 GB for
    5 million events). Here it is checked against a plain count over every event."""
    import collections
    import datetime as dt
    import json
    import sqlite3

    inbox, _ = simulated
    store = tmp_path / "s.db"
    run_cli("replay", str(inbox), "--store", str(store), "--output", str(tmp_path / "o"))
    rows = json.loads(run_cli("report", "--store", str(store), "--format", "json").stdout)
    cells: dict[tuple[str, str], collections.Counter[str]] = collections.defaultdict(
        collections.Counter)
    lags: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    with sqlite3.connect(store) as db:
        for first_seen, kommune, first, versions, other_seen in db.execute(
                "SELECT first_seen, municipality_code, first_version, versions, other_seen"
                " FROM events"):
            key = (dt.datetime.fromtimestamp(first_seen, DENMARK).strftime("%Y-%m"),
                   kommune or "unknown")
            cells[key]["first_2_2" if first == "2.2" else "first_3_0"] += 1
            cells[key]["twins" if versions == 3 else
                       "only_2_2" if versions == 1 else "only_3_0"] += 1
            if versions == 3 and other_seen is not None:
                lags[key].append(other_seen - first_seen)
    expected = []
    for key in sorted(cells):
        ordered = sorted(lags[key])

        def rank(q: float, ordered: list[int] = ordered) -> int | None:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None

        counts = cells[key]
        expected.append({
            "month": key[0], "municipality_code": key[1],
            "events": counts["first_2_2"] + counts["first_3_0"],
            **{name: counts[name] for name in ("first_2_2", "first_3_0", "twins", "only_2_2",
                                               "only_3_0")},
            "lag_p50_s": rank(0.5), "lag_p90_s": rank(0.9), "lag_p99_s": rank(0.99)})
    assert len(rows) > 50
    assert rows == expected


def test_report_months_are_danish_months() -> None:
    """Until stop 18 the report's months were UTC months: an event in the first hour or two
    of a Danish month counted in the month before."""
    import datetime as dt
    import sqlite3

    from adapters.sqlite_schema import DANISH_MONTH_SQL

    instants = []
    for year in range(2000, 2041):
        for month in range(1, 13):
            turn = dt.datetime(year, month, 1, tzinfo=DENMARK).timestamp()
            instants += [int(turn) + delta for delta in range(-3 * 3600, 3 * 3600 + 1, 900)]
            instants += [int(turn) + 14 * 86400]  # mid-month, in summer and winter time
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (at INTEGER)")
    db.executemany("INSERT INTO t VALUES (?)", [(t,) for t in instants])
    months = db.execute(f"SELECT at, {DANISH_MONTH_SQL.format(t='at')} FROM t").fetchall()
    assert len(months) == 41 * 12 * 26
    wrong = [(at, month) for at, month in months
             if month != dt.datetime.fromtimestamp(at, DENMARK).strftime("%Y-%m")]
    assert wrong == []
