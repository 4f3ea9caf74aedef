"""Coverage-guided fuzzing with atheris (libFuzzer) of the same path as bench/fuzz.py.

    .venv/bin/python bench/fuzz_atheris.py RUNS CORPUS_DIR

Run by `bench/fuzz.py --atheris RUNS`, which seeds CORPUS_DIR with valid messages of both
versions and forms. The gateway's modules are imported instrumented, so libFuzzer steers its
mutations towards new branches of the parsers. An exception is a crash: libFuzzer stops, prints
the input, writes it to bench/out/fuzz/crash-*, and exits non-zero. On success it prints
"Done N runs in S second(s)".
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["gateway"]):
    from gateway.correlate import DEFAULT_TOLERANCE_S, CorrelationState
    from gateway.decide import decide_batch, prepare
    from gateway.envelope import EnvelopeReader
    from gateway.model import RawMessage

import datetime as dt  # noqa: E402 - after the instrumented imports

READER = EnvelopeReader()
AT = dt.datetime(2022, 3, 1, 9, 20, tzinfo=dt.UTC)


def one_input(data: bytes) -> None:
    item = prepare(RawMessage(data, "fuzz", AT), READER)
    (result,), _ = decide_batch([item], CorrelationState(), DEFAULT_TOLERANCE_S)
    if result.outcome is None:  # every input must have an outcome
        raise AssertionError("no outcome")
    if result.reason == "internal_error":  # prepare caught an exception of the parser
        raise AssertionError(f"the parser raised: {result.detail}")


def main() -> None:
    runs, corpus = sys.argv[1], sys.argv[2]
    artifacts = ROOT / "bench" / "out" / "fuzz"
    artifacts.mkdir(parents=True, exist_ok=True)
    atheris.Setup([sys.argv[0], f"-runs={runs}", "-max_len=8192", "-timeout=5",
                   "-rss_limit_mb=2048", "-print_final_stats=1",
                   f"-artifact_prefix={artifacts}/", corpus], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
