"""Faults to inject on this machine, shared by the tests and bench/chaos.py."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path | None]:
    """A tmpfs of `size` mounted at `path`; None when this machine does not let us mount one."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> None:
    """Write to `path` until the file system says no, to its last block."""
    for block in (65536, 512):
        with contextlib.suppress(OSError), path.open("ab") as f:
            while True:
                f.write(b"\0" * block)
                f.flush()
