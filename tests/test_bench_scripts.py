"""The scale and latency benchmarks in small form: they run, and what they check holds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def bench(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`bench/<script>` with `args`, as one would run it from the repository root."""
    return subprocess.run([sys.executable, f"bench/{script}", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_scale_script_decides_alike_with_and_without_a_big_store(tmp_path: Path) -> None:
    result = bench("scale.py", "--events", "20000", "--messages", "2000",
                   "--workdir", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line[:22].strip(): line[22:].strip() for line in result.stdout.splitlines()}
    assert lines["full-store decisions"] == "equal the prefill-only store"
    assert lines["measured messages"].startswith("2000 (1000 of them twins")
    for name in ("empty", "prefill", "full"):
        assert "peak RSS" in lines[f"replay into {name}"]
    backup = re.fullmatch(r"([\d.]+) s for (\d+) MB, quick_check included, peak RSS (\d+) MB",
                          lines["backup, full store"])
    assert backup is not None, lines["backup, full store"]
    assert float(backup[1]) > 0
    assert int(backup[2]) > 0


def test_latency_script_reads_the_gateways_histogram_next_to_the_bare_client() -> None:
    result = bench("latency.py", "--rate", "200", "--seconds", "3", "--bare", timeout=300)
    print(result.stdout)
    lines = {line[:20].strip(): line[20:].strip() for line in result.stdout.splitlines()}
    assert lines["messages"].startswith("600 (histogram counted 600)")
    assert float(lines["p99"].split()[0]) > 0
    bare = re.fullmatch(r"published at \d+ msg/s, delivery -> ack p50 ([\d.]+) ms  "
                        r"p90 [\d.]+ ms  p99 ([\d.]+) ms  within 50 ms [\d.]+",
                        lines["bare aio-pika"])
    assert bare is not None, lines["bare aio-pika"]
    assert 0 < float(bare[1]) <= float(bare[2])


def lines_of(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The summary lines: a 20-character label, then the figures."""
    return {line[:20].strip(): line[20:].strip() for line in result.stdout.splitlines()}


@pytest.mark.parametrize("source", ["--amqp", "--push", "--reconnect-every"])
def test_soak_script_samples_the_gateways_memory_until_everything_is_committed(
    source: str,
) -> None:
    options = {"--amqp": [], "--push": ["--push"], "--reconnect-every": [source, "2"]}
    result = bench("soak.py", "--rate", "200", "--minutes", "0.1", "--sample-s", "2",
                   *options[source], timeout=300)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if re.match(r"\s*\d+s ", line)]
    assert len(rows) >= 2, result.stdout
    published, committed = int(rows[-1][1]), int(rows[-1][2])
    assert published == 1200  # 0.1 minutes at 200 msg/s
    if source == "--reconnect-every":  # a lost ack's redelivery is decided again
        assert committed >= 1200
        closed = re.fullmatch(r"(\d+) \(every 2 s\)", lines_of(result)["connections closed"])
        assert closed is not None
        assert int(closed[1]) >= 1
    else:
        assert committed == 1200, "every one decided"
    assert all(float(row[3]) > 20 for row in rows), "the gateway's RSS, in MB"
    lines = lines_of(result)
    decided = str(committed)  # as the last sample counted them
    growth = re.fullmatch(r"[\d.]+ MB after \d+ s \(\d+ messages\), [\d.]+ MB at the end "
                          rf"\({decided}\): [+-][\d.]+ MB, [+-][\d.]+ MB per 100 000 messages",
                          lines["gateway RSS"])
    assert growth is not None, lines["gateway RSS"]
    assert lines["receive -> commit"].endswith(f"over {decided} messages")
    assert re.fullmatch(r"\d+ \(.*info \d+.*\)", lines["log lines"]), lines["log lines"]
    if source == "--push":
        assert lines["push answers"] == "StatusKode 20: 1200", "each answered once committed"


def test_latency_script_slows_the_gateways_fsync_when_asked() -> None:
    result = bench("latency.py", "--rate", "200", "--seconds", "2", "--slow-fsync-ms", "30",
                   timeout=300)
    print(result.stdout, result.stderr)
    lines = {line[:20].strip(): line[20:].strip() for line in result.stdout.splitlines()}
    # every commit waits 30 ms for its fsync, so no message is committed sooner
    assert float(lines["p50"].split()[0]) >= 30


def test_compare_script_runs_both_trees_by_turns(tmp_path: Path) -> None:
    # the earlier tree's interpreter: a stand-in for a venv with the old lock file
    calls = tmp_path / "calls"
    before_python = tmp_path / "python-before"
    before_python.write_text(f'#!/bin/sh\necho run >> {calls}\nexec {sys.executable} "$@"\n')
    before_python.chmod(0o755)
    result = bench("compare.py", "HEAD", "--runs", "2", "--messages", "700",
                   "--workdir", str(tmp_path / "work"), "--before-python", str(before_python))
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls.read_text().split() == ["run"] * 3  # the warm-up and both of HEAD's runs
    runs = [line.split()[2] for line in result.stdout.splitlines() if line.startswith("run ")]
    assert runs == ["HEAD", "this", "HEAD", "this"]  # by turns
    medians = [line for line in result.stdout.splitlines() if line.startswith("median ")]
    assert len(medians) == 2
    assert all("msg/s" in line for line in medians)


def test_publish_script_times_the_sink_next_to_aio_pika() -> None:
    result = bench("publish.py", "--messages", "200", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    names = [line[:22].strip() for line in result.stdout.splitlines()]
    assert names == ["aio-pika publish", "gateway AMQP sink"] * 2  # by turns
    assert all("us CPU a message" in line for line in result.stdout.splitlines())


def test_bounds_script_runs_every_mode_by_turns_and_decides_alike(tmp_path: Path) -> None:
    result = bench("bounds.py", "--rounds", "2", "--messages", "700", "--workdir", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    modes = [line[9:19].strip() for line in lines if line.startswith("round ")]
    assert modes == ["ceiling", "parse side", "no store", "replay"] * 2  # by turns
    medians = [line for line in lines if line.startswith("  ")]
    assert [line.split("  ")[1].strip() for line in medians] == [
        "ceiling", "parse side", "no store", "replay"]
    assert all("of the ceiling" in line for line in medians)
    emitted = next(line for line in lines if line.startswith("emitted "))
    assert emitted.endswith("(alike)"), emitted  # the bound without a store decides as replay


def test_memory_script_runs_every_case(tmp_path: Path) -> None:
    result = bench("memory.py", "--count", "2", "--size", "2000000", "--workdir", str(tmp_path),
                   timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [
        "replay-files", "replay-files", "replay-texts", "quarantine", "mailbox", "push"]
    assert all(re.search(r"peak RSS [1-9]\d* MB", line) for line in lines)
    assert "0 left, exit 0" in lines[4]
    assert re.search(r"2 x 2.0 MB at once: .*, \d+ posts", lines[5])
