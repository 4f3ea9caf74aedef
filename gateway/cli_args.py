"""The command line's arguments: every command and option, with what it is and its default."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from gateway.correlate import DEFAULT_PAIR_WINDOW_HOURS, DEFAULT_TOLERANCE_S
from gateway.envelope import DEFAULT_MAX_BYTES
from gateway.metrics import version

DEFAULT_BATCH = 8000  # a commit writes every page its batch touched: bigger batches share pages
PARALLEL_FROM = 5000  # files


class UsageError(Exception):
    pass


def _at_least(minimum: int) -> Callable[[str], int]:
    """An integer option's type: a value below `minimum` is a usage error, not a surprise
    (`purge --retention-days -5` would delete everything, `--max-bytes 0` refuse all)."""
    def integer(text: str) -> int:
        value = int(text)  # ValueError: argparse says "invalid integer value"
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the least allowed, {minimum}")
        return value
    return integer


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"{text} is not above 0")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 and 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aes-gateway",
        description="SF0741 case events from AES in both versions (2.2 and 3.0) in; one "
                    "deduplicated canonical stream out. Exit 0 on success, 2 on usage or I/O "
                    "errors, 1 on a failure of aes-gateway itself (logged, to be reported).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_replay(sub)
    _add_service(sub)
    _add_store_commands(sub)
    return parser


def _add_replay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("replay", help="decide message files into a store and emit JSON Lines")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                   help="message files, or directories of *.xml read in file-name order")
    p.add_argument("--store", type=Path, help="store file (default: a temporary store)")
    p.add_argument("--output", default="-", help="JSON Lines output, '-' for stdout (default)")
    p.add_argument("--summary", help="write the summary JSON here ('-' for stdout)")
    p.add_argument("--batch-size", type=_at_least(1), default=DEFAULT_BATCH,
                   help="messages per transaction (default: %(default)s)")
    p.add_argument("--tolerance", type=_at_least(0), default=DEFAULT_TOLERANCE_S,
                   help="match tolerance in seconds (default: %(default)s)")
    p.add_argument("--max-bytes", type=_at_least(1), default=DEFAULT_MAX_BYTES,
                   help="message size limit (default: %(default)s)")
    p.add_argument("--workers", type=_at_least(0),
                   help=f"parsing processes (default: 1 from {PARALLEL_FROM} files on)")
    p.add_argument("--metrics", help="write the final metrics here (Prometheus text format)")
    p.add_argument("--pair-window-hours", type=_positive, default=DEFAULT_PAIR_WINDOW_HOURS,
                   help="how long an event waits for its twin before its pair outcome counts "
                        "(default: %(default)s)")
    p.add_argument("--close-windows", action="store_true",
                   help="at the end, judge every event as if its pairing window had passed")

    p = sub.add_parser("simulate", help="write simulated transition traffic and an answer key")
    p.add_argument("outdir", type=Path, help="an empty or new directory, or an earlier "
                   "simulation's (replaced)")
    p.add_argument("--cases", type=_at_least(1), required=True, help="case histories")
    p.add_argument("--seed", type=int, default=1, help="(default: %(default)s)")
    p.add_argument("--bad-share", type=_share, default=0.03,
                   help="share of bad input, of every kind (default: %(default)s)")

    p = sub.add_parser("demo", help="simulate, replay and show the overlap report")
    p.add_argument("--cases", type=_at_least(1), default=300, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=7, help="(default: %(default)s)")
    p.add_argument("--workdir", type=Path, default=Path(".demo"),
                   help="(default: %(default)s)")
    sub.add_parser("schema", help="print the JSON Schema of the canonical event")


def _add_service(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="the live service: sources -> store -> sinks")
    p.add_argument("--config", type=Path, required=True, help="the TOML configuration")
    p.add_argument("--until-idle", type=float, metavar="SECONDS",
                   help="drain the sources and exit after this long without input")

    p = sub.add_parser("config", help="validate a configuration and explain it")
    p.add_argument("action", choices=["check"])
    p.add_argument("file", nargs="?", type=Path, help="the TOML configuration (or --config)")
    p.add_argument("--config", type=Path, help="the TOML configuration, as `run` takes it")


def _add_store_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    store_help = "the store file (an existing one)"
    p = sub.add_parser("quarantine", help="list, show or replay quarantined messages")
    p.add_argument("action", choices=["list", "show", "replay"])
    p.add_argument("id", nargs="?", type=int,
                   help="show: the message's id; replay: only this one")
    p.add_argument("--store", type=Path, required=True, help=store_help)
    p.add_argument("--output", default="-", help="replay: JSON Lines output, '-' for stdout "
                   "(default)")
    p.add_argument("--max-bytes", type=_at_least(1), default=DEFAULT_MAX_BYTES,
                   help="replay: message size limit (default: %(default)s)")
    p.add_argument("--raw", action="store_true",
                   help="show: the message exactly as stored, CPR and all, on stdout")

    p = sub.add_parser("report", help="the migration report: overlap per month and kommune")
    p.add_argument("--store", type=Path, required=True, help=store_help)
    p.add_argument("--format", choices=["table", "json", "csv"], default="table",
                   help="(default: %(default)s)")

    p = sub.add_parser("backup", help="copy the store consistently, also while the gateway "
                       "runs")
    p.add_argument("dest", type=Path, help="a new file, never overwritten; or a directory, "
                   "where the backup is named <store name>-<UTC time>.db")
    p.add_argument("--store", type=Path, required=True, help=store_help)
    p.add_argument("--keep", type=_at_least(1), metavar="N",
                   help="into a directory: delete all but the newest N backups of this store "
                        "there (default: delete none)")
    p.add_argument("--metrics", type=Path, metavar="FILE",
                   help="after a backup, its time and size for node_exporter's textfile "
                        "collector (Prometheus text format)")

    p = sub.add_parser("restore", help="put a backup in the store's place (gateway stopped); "
                       "the replaced store is kept beside it, until the gateway's purge "
                       "deletes it retention_days later")
    p.add_argument("backup", type=Path, help="a file written by `aes-gateway backup`")
    p.add_argument("--store", type=Path, required=True,
                   help="the store file to replace (or to create)")

    p = sub.add_parser("purge", help="delete stored data older than the retention period")
    p.add_argument("--store", type=Path, required=True, help=store_help)
    p.add_argument("--retention-days", type=_at_least(1), default=400,
                   help="events, message ids and links (default: %(default)s)")
    p.add_argument("--quarantine-days", type=_at_least(0), default=90,
                   help="the quarantine (default: %(default)s)")
