"""The fuzz script in small form: it runs, every input gets an outcome, none is slow."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_fuzz_script_runs_clean() -> None:
    result = subprocess.run([sys.executable, "bench/fuzz.py", "--inputs", "1500",
                             "--atheris", "5000"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("inputs 1500 ")  # 3 strategies x 500
    assert lines[-1].startswith("atheris 5000 runs ")  # coverage-guided, no crash
