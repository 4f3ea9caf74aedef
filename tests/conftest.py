from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import _simulate

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "gateway.cli"]


def run_cli(
    *args: str, check: bool = True, env_level: str = "ERROR", timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AES_GATEWAY_LOG_LEVEL": env_level}
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"aes-gateway {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stderr[-3000:]}")
    return result


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="session")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """A simulated transition-period capture (shared, read-only) and its answer key."""
    outdir = tmp_path_factory.mktemp("sim") / "in"
    key = _simulate(outdir, cases=400, seed=11, bad_share=0.03)
    return outdir, key
