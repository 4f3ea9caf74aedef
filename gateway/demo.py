"""`make demo`: simulated transition traffic -> canonical stream + overlap report."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from gateway.correlate import DEFAULT_PAIR_WINDOW_HOURS


def _table(summary: dict[str, object]) -> str:
    overlap, pairs = summary["overlap"], summary["pair_outcomes"]
    by_reason = summary["quarantined_by_reason"]
    assert isinstance(overlap, dict)  # noqa: S101 - shape of our own summary
    assert isinstance(pairs, dict)  # noqa: S101
    assert isinstance(by_reason, dict)  # noqa: S101
    events = sum(overlap.values()) or 1
    lines = [
        "Version overlap (AES case events)",
        f"  seen in both 2.2 and 3.0 : {overlap['both']:6d}  "
        f"({100 * overlap['both'] / events:.1f} %)",
        f"  only in 2.2              : {overlap['only_2_2']:6d}  "
        f"({100 * overlap['only_2_2'] / events:.1f} %)",
        f"  only in 3.0              : {overlap['only_3_0']:6d}  "
        f"({100 * overlap['only_3_0'] / events:.1f} %)",
        f"Pairing windows closed ({DEFAULT_PAIR_WINDOW_HOURS:g} h): "
        "did the other version come in time?",
        f"  twin within the window   : {pairs.get('both', 0):6d}",
        f"  only 2.2 came            : {pairs.get('only_2_2', 0):6d}",
        f"  only 3.0 came            : {pairs.get('only_3_0', 0):6d}",
        "Messages",
        f"  received                 : {summary['messages']:6d}",
        f"  emitted as new events    : {summary['emitted']:6d}",
        f"  duplicates suppressed    : {summary['duplicates']:6d}  {summary['duplicates_by_kind']}",
        f"  cross-version matches    : {summary['matches_by_method']}",
        f"  case links learned       : {summary['case_links']:6d}",
        f"  CPR conflicts            : {summary['conflicts']:6d}",
        f"  quarantined              : {summary['quarantined']:6d}",
    ]
    lines += [f"    {reason:<26}: {count:4d}" for reason, count in by_reason.items()]
    return "\n".join(lines)


async def demo(workdir: Path, cases: int, seed: int) -> int:
    from gateway.cli import _simulate, run_replay

    if "AES_GATEWAY_LOG_LEVEL" not in os.environ:  # the table below counts the quarantine
        logging.getLogger().setLevel(logging.ERROR)
    shutil.rmtree(workdir, ignore_errors=True)
    inbox = workdir / "in"
    key = _simulate(inbox, cases, seed, 0.03)
    started = time.perf_counter()
    summary = await run_replay([inbox], workdir / "gateway.db", str(workdir / "canonical.jsonl"),
                               metrics_path=str(workdir / "metrics.prom"), close_windows=True)
    elapsed = time.perf_counter() - started
    out = sys.stdout
    out.write(f"Simulated {cases} cases: {summary['messages']} messages in {inbox}/\n")
    out.write(f"Replayed in {elapsed:.2f} s -> {workdir / 'canonical.jsonl'}\n\n")
    out.write("First canonical events:\n")
    with (workdir / "canonical.jsonl").open(encoding="utf-8") as stream:
        for _, line in zip(range(2), stream, strict=False):
            out.write(json.dumps(json.loads(line), indent=2, ensure_ascii=False) + "\n")
    out.write("\n" + _table(summary) + "\n\n")
    matches = summary == key
    out.write(f"Matches the simulator's answer key: {'yes' if matches else 'NO'}\n")
    if not matches:
        out.write(json.dumps({"expected": key, "got": summary}, indent=2) + "\n")
    return 0 if matches else 1
