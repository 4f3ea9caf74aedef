"""The shipped systemd units' sandbox lets the gateway do everything it does.

deploy/aes-gateway.service allows the system calls of `@system-service` less `@privileged` and
`@resources`, and systemd kills a process that makes any other with SIGSYS. No other test sees
a change (ours, or a dependency's) that starts to make one: the service would die in
production, at start or at the first message of some kind. So the gateway runs here under
strace, with every kind of source and sink and its parse worker, and so does a backup; what
they did is held against the units' own settings: system calls, socket families, memory both
writable and executable (`MemoryDenyWriteExecute`), new namespaces (`RestrictNamespaces`),
and the paths they write (`ProtectSystem=strict`: only `ReadWritePaths`, /tmp and /dev/shm).

They run as a user other than root, as the units run them (`User=aes-gateway`), in a user
namespace: run as root, SQLite gives the files it creates their database's owner (`fchown`, in
`@privileged`), which it never does for another user.
"""

from __future__ import annotations

import asyncio
import functools
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from gateway.simulate import simulate
from tests import brokers
from tests.conftest import CLI, ROOT, read_jsonl, run_cli
from tests.mosquitto import Mosquitto, free_port
from tests.test_push import PUSH_BODY, post, status_code

AS_ANOTHER_USER = ("unshare", "--user", "--map-user=1000", "--map-group=1000")
CALL = re.compile(r"\d+ +([a-z0-9_]+)\((.*)")


def traced(trace: Path, args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    """`aes-gateway ARGS` as another user, every system call of it and its children in `trace`."""
    for tool in ("unshare", "strace", "systemd-analyze"):
        if shutil.which(tool) is None:
            pytest.skip(f"no {tool} on this machine")
    if subprocess.run([*AS_ANOTHER_USER, "true"], capture_output=True).returncode != 0:
        pytest.skip("no user namespaces here")
    return subprocess.Popen([*AS_ANOTHER_USER, "strace", "-f", "-qq", "-o", str(trace), *CLI,
                             *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@functools.cache
def syscall_set(name: str) -> frozenset[str]:
    """A system call, or a `@set` of them with the sets it names expanded, as systemd has it."""
    if not name.startswith("@"):
        return frozenset([name])
    listed = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True,
                            text=True, check=True).stdout.splitlines()[1:]
    entries = (line.strip() for line in listed)
    return frozenset().union(*(syscall_set(e) for e in entries if e and not e.startswith("#")))


class Sandbox:
    """What a unit allows: system calls (`SystemCallFilter=` lines: allow-lists, less what `~`
    lines take from them), socket families, memory writable and executable at once, and new
    namespaces."""

    def __init__(self, unit: str) -> None:
        self.syscalls: frozenset[str] = frozenset()
        self.families: frozenset[str] = frozenset()
        self.no_wx = False
        self.no_namespaces = False
        for line in (ROOT / "deploy" / unit).read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "SystemCallFilter":
                named = frozenset().union(*map(syscall_set, value.lstrip("~").split()))
                self.syscalls = (self.syscalls - named if value.startswith("~")
                                 else self.syscalls | named)
            elif key == "RestrictAddressFamilies":
                self.families = frozenset(value.split())
            elif key == "MemoryDenyWriteExecute":
                self.no_wx = value == "true"
            elif key == "RestrictNamespaces":
                self.no_namespaces = value == "true"
        assert self.syscalls, f"{unit} has no SystemCallFilter"


Calls = list[tuple[str, str]]  # (system call, its arguments as strace shows them)


def system_calls(trace: Path) -> Calls:
    return [(found[1], found[2]) for line in trace.read_text().splitlines()
            if (found := CALL.match(line))]


CHANGES_FILES = frozenset({"mkdir", "mkdirat", "rename", "renameat", "renameat2", "link", "linkat",
                           "symlink", "symlinkat", "unlink", "unlinkat", "chmod", "fchmodat",
                           "truncate", "creat"})
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC")
# What any of the units' services may write besides its ReadWritePaths (PrivateTmp's /tmp,
# and /dev/shm for multiprocessing's semaphores): paths checked here, no files made here.
ALWAYS_WRITABLE = ("/tmp/", "/dev/shm/", "/dev/null")  # noqa: S108


def written(calls: Calls) -> set[str]:
    """The paths that calls which succeeded (or whose end the trace holds elsewhere) created,
    wrote, renamed, linked, removed or changed the mode of."""
    paths = set()
    for name, args in calls:
        if "= -1 " in args:
            continue
        opens = name in ("open", "openat") and any(flag in args for flag in WRITE_FLAGS)
        if opens or name in CHANGES_FILES:
            paths.update(re.findall(r'"([^"]*)"', args.split(") =")[0]))
    return paths


def assert_allowed(calls: Calls, unit: str, writable: tuple[str, ...]) -> None:
    """What `calls` did is what `unit` allows; `writable` stands in for its ReadWritePaths.
    Under ProtectSystem=strict, ProtectHome and PrivateTmp, those, /tmp and /dev/shm (where
    multiprocessing's semaphores live) are all a service may write; and its working directory
    is /, so a relative path is never writable."""
    sandbox = Sandbox(unit)
    outside = {path for path in written(calls)
               if not path.startswith((*writable, *ALWAYS_WRITABLE))}
    assert outside == set(), f"paths written that {unit} keeps read-only"
    assert {name for name, _ in calls} - sandbox.syscalls == set(), (
        f"system calls that {unit} forbids")
    families = {args.split(",")[0] for name, args in calls if name == "socket"}
    assert families - sandbox.families == set(), f"socket families that {unit} forbids"
    if sandbox.no_wx:
        both = [f"{name}({args[:80]}" for name, args in calls
                if name in ("mmap", "mprotect") and "PROT_WRITE" in args and "PROT_EXEC" in args]
        assert both == [], f"memory writable and executable, which {unit} forbids"
    if sandbox.no_namespaces:
        made = [f"{name}({args[:80]}" for name, args in calls
                if name in ("unshare", "setns") or "CLONE_NEW" in args]
        assert made == [], f"namespaces, which {unit} forbids"


def test_the_gateway_makes_only_the_system_calls_its_unit_allows(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()
    push = free_port()

    async def scenario() -> int:
        topo = await brokers.declare()
        try:
            await brokers.publish_simulated(topo, simulate(150, 7).messages)
            config = tmp_path / "gateway.toml"
            config.write_text(brokers.config_toml(topo, str(tmp_path / "g.db"), f"""
                [[sources]]
                type = "push"
                listen = "127.0.0.1:{push}"
                [[sinks]]
                type = "mqtt"
                url = "mqtt://127.0.0.1:{broker.port}"
                [[sinks]]
                type = "jsonl"
                path = "{tmp_path / 'out.jsonl'}"
                """))
            gateway = traced(tmp_path / "trace", ["run", "--config", str(config),
                                                  "--until-idle", "3"], tmp_path)
            answer = await _push(f"http://127.0.0.1:{push}/", PUSH_BODY)
            _, err = await asyncio.to_thread(gateway.communicate, timeout=120)
            assert gateway.returncode == 0, err.decode()[-2000:]
            return status_code(answer)
        finally:
            await brokers.delete(topo)

    try:
        status = asyncio.run(scenario())
    finally:
        broker.stop()
    assert status == 20
    assert len(read_jsonl(tmp_path / "out.jsonl")) > 100
    calls = system_calls(tmp_path / "trace")
    started = [args for name, args in calls if name == "execve"]
    assert len(started) == 3, "the gateway, multiprocessing's tracker and the parse worker"
    assert {"accept4", "fdatasync"} <= {name for name, _ in calls}, "a push, a sink's write"
    assert_allowed(calls, "aes-gateway.service", (f"{tmp_path}/",))


async def _push(url: str, body: bytes) -> str:
    """POSTs `body` once the receiver listens (strace slows the start); its answer."""
    for _ in range(600):
        try:
            return await post(url, body)
        except aiohttp.ClientConnectorError:
            await asyncio.sleep(0.1)
    return await post(url, body)


def test_a_backup_makes_only_the_system_calls_its_unit_allows(tmp_path: Path) -> None:
    store = tmp_path / "gateway.db"
    run_cli("replay", str(ROOT / "tests" / "fixtures"), "--store", str(store), "--output",
            str(tmp_path / "out.jsonl"))
    backups = tmp_path / "backups"
    backups.mkdir()
    backup = traced(tmp_path / "trace", ["backup", str(backups), "--store", str(store),
                                         "--keep", "2", "--metrics", str(tmp_path / "b.prom")],
                    tmp_path)
    _, err = backup.communicate(timeout=120)
    assert backup.returncode == 0, err.decode()[-2000:]
    assert [p.suffix for p in backups.iterdir()] == [".db"]
    assert_allowed(system_calls(tmp_path / "trace"), "aes-gateway-backup.service",
                   (f"{tmp_path}/",))
