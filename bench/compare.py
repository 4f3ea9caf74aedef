"""Replay time of this tree against an earlier revision, run by turns on the same input.

    .venv/bin/python bench/compare.py REV [--runs 5] [--messages 100000] [--before-python PATH]

On a machine whose speed drifts (a shared VM), before/after figures taken minutes apart say
little; runs taken by turns, A B A B ..., share the drift. Each run is `aes-gateway replay`
of the same simulated files into a fresh store, in a process of its own, importing the code
of its tree (REV is checked out with `git worktree` into a temporary folder), after one
unmeasured run of each. Prints every run's seconds and user+sys CPU seconds, then the medians.

`--before-python` runs REV with another interpreter: a second venv holding the old lock file,
to measure a dependency upgrade (`compare.py HEAD --before-python /tmp/old/bin/python`).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.replay import simulated_inbox  # noqa: E402

REPLAY = (
    "import asyncio, logging, sys; from pathlib import Path;"
    "from gateway.cli import run_replay;"
    "logging.disable(logging.WARNING);"
    "asyncio.run(run_replay([Path(sys.argv[1])], Path(sys.argv[2]), sys.argv[3],"
    " close_windows=True))"
)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(python: str, tree: Path, inbox: Path, scratch: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the replay and its parse worker)."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cpu, started = children_cpu(), time.perf_counter()
    subprocess.run([python, "-c", REPLAY, str(inbox), str(scratch / "replay.db"),
                    str(scratch / "out.jsonl")], cwd=tree, env=env, check=True)
    return time.perf_counter() - started, children_cpu() - cpu


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("rev", help="the revision to compare with, e.g. a commit or HEAD~3")
    args.add_argument("--runs", type=int, default=5)
    args.add_argument("--messages", type=int, default=100_000)
    args.add_argument("--seed", type=int, default=42)
    args.add_argument("--workdir", type=Path, default=Path("bench/out/replay"))
    args.add_argument("--before-python", default=sys.executable,
                      help="the interpreter for REV's runs (default: this one)")
    opts = args.parse_args()
    inbox = simulated_inbox(opts.workdir, opts.messages, opts.seed).resolve()
    with tempfile.TemporaryDirectory(prefix="aes-compare-") as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet",
                        str(before), opts.rev], check=True)
        try:
            trees = ((opts.rev, opts.before_python, before), ("this tree", sys.executable, ROOT))
            for _, python, tree in trees:  # unmeasured: warms the page cache, compiles imports
                run_once(python, tree, inbox, Path(tmp) / "scratch")
            times: dict[str, list[tuple[float, float]]] = {opts.rev: [], "this tree": []}
            for run in range(1, opts.runs + 1):
                for name, python, tree in trees:
                    wall, cpu = run_once(python, tree, inbox, Path(tmp) / "scratch")
                    times[name].append((wall, cpu))
                    print(f"run {run}  {name:12s} {wall:6.2f} s  cpu {cpu:6.2f} s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(before)], check=False)
    files = len(list(inbox.glob("*.xml")))
    for name, runs in times.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"median {name:12s} {wall:6.2f} s ({files / wall:7.0f} msg/s)  cpu {cpu:6.2f} s")


if __name__ == "__main__":
    main()
