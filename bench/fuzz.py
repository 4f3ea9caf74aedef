"""Fuzz the envelope and both payload parsers: every input must give an outcome.

    .venv/bin/python bench/fuzz.py [--inputs 100000] [--atheris RUNS]

Hypothesis drives three strategies in turn (arbitrary bytes; valid messages of both versions
and forms with bytes replaced, inserted and cut; arbitrary text as a 2.2 record). Every input
goes through the same `prepare` + `decide` as live traffic. Prints inputs, outcomes, the
slowest input and the memory before and after; exit 1 on any exception (an `internal_error`
outcome is one: prepare catches it) or an input slower than a second.

With --atheris RUNS, atheris (libFuzzer, coverage-guided) then runs RUNS inputs more through
the same path in a process of its own (bench/fuzz_atheris.py), its corpus seeded with the valid
messages; exit 1 when it finds a crash.
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.correlate import DEFAULT_TOLERANCE_S, CorrelationState  # noqa: E402 - after the path is set
from gateway.decide import decide_batch, prepare  # noqa: E402
from gateway.envelope import EnvelopeReader  # noqa: E402
from tests import helpers as h  # noqa: E402

READER = EnvelopeReader()
VALID = [h.v22_inline(h.record()), h.v22_base64(h.record()), h.v30_inline(h.v30_xml()),
         h.v30_base64(h.v30_xml()), (ROOT / "tests/fixtures/v30-push-body.xml").read_bytes()]
outcomes: Counter[str] = Counter()
slowest: list[tuple[float, bytes]] = [(0.0, b"")]  # seconds, input


def decide(body: bytes) -> None:
    started = time.perf_counter()
    item = prepare(h.raw(body), READER)
    (result,), _ = decide_batch([item], CorrelationState(), DEFAULT_TOLERANCE_S)
    took = time.perf_counter() - started
    if took > slowest[0][0]:
        slowest[0] = (took, body)
    outcomes[result.reason.value if result.reason else result.outcome.value] += 1


def _timed(body: bytes) -> float:
    started = time.perf_counter()
    decide_batch([prepare(h.raw(body), READER)], CorrelationState(), DEFAULT_TOLERANCE_S)
    return time.perf_counter() - started


def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["replace", "insert", "cut"]))
        chunk = draw(st.binary(min_size=1, max_size=8))
        if kind == "replace":
            data[at : at + len(chunk)] = chunk
        elif kind == "insert":
            data[at:at] = chunk
        else:
            del data[at : at + len(chunk)]
    return bytes(data)


def run(inputs: int) -> None:
    per = -(-inputs // 3)
    common = settings(max_examples=per, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))

    @common
    @given(st.binary(max_size=2048))
    def any_bytes(body: bytes) -> None:
        decide(body)

    @common
    @given(st.composite(mutated)())
    def mutations(body: bytes) -> None:
        decide(body)

    @common
    @given(st.text(max_size=200))
    def records(text: str) -> None:
        decide(h.v22_base64(text, charset="UTF-8"))

    for test in (any_bytes, mutations, records):
        test()


def run_atheris(runs: int) -> bool:
    """libFuzzer over the same path, seeded with the valid messages; True when clean."""
    with tempfile.TemporaryDirectory(prefix="aes-atheris-") as corpus:
        for index, body in enumerate(VALID):
            (Path(corpus) / f"seed-{index}").write_bytes(body)
        started = time.perf_counter()
        result = subprocess.run([sys.executable, str(ROOT / "bench" / "fuzz_atheris.py"),
                                 str(runs), corpus], capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - started
        found = len(list(Path(corpus).iterdir()))
    done = re.search(r"Done (\d+) runs", result.stderr)
    coverage = re.findall(r"cov: (\d+)", result.stderr)
    if result.returncode != 0 or done is None:
        print(f"atheris: exit {result.returncode}\n{result.stderr[-3000:]}")
        return False
    print(f"atheris {done.group(1)} runs in {elapsed:.0f} s; {coverage[-1] if coverage else '?'}"
          f" coverage points; corpus {len(VALID)} -> {found} inputs")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--atheris", type=int, default=0, metavar="RUNS")
    args = parser.parse_args()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    run(args.inputs)
    elapsed = time.perf_counter() - started
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    total = sum(outcomes.values())
    # The slowest input timed again on its own: in the run, a garbage collection of the
    # objects hypothesis keeps can land on any input (up to 0.8 s seen for a 4-byte input).
    took, body = slowest[0]
    alone = min(_timed(body) for _ in range(3))
    print(f"inputs {total} in {elapsed:.0f} s; slowest {took * 1000:.1f} ms in the run, "
          f"{alone * 1000:.2f} ms on its own ({len(body)} bytes); "
          f"peak RSS {rss_before // 1024} -> {rss_after // 1024} MB")
    for outcome, count in outcomes.most_common():
        print(f"  {outcome:<28}{count:8d}")
    # prepare quarantines a parser's exception as internal_error, so that live traffic goes on:
    # here it is a crash
    clean = alone < 1.0 and not outcomes["internal_error"]
    if args.atheris:
        clean = run_atheris(args.atheris) and clean
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
