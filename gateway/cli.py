"""Command line: argv -> wiring -> asyncio.run (the arguments in cli_args.py). Exit 0 on success,
2 on usage or I/O errors, 1 on a failure of aes-gateway itself."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final

import msgspec
from prometheus_client import CollectorRegistry, write_to_textfile

from adapters import sqlite_backup
from adapters.files import InputError, list_inputs, prepared_batches
from adapters.jsonl import JsonlSink
from adapters.sqlite import QuarantineRow, Store, StoreError
from gateway import canonical, config, config_explain, logs, report
from gateway.cli_args import DEFAULT_BATCH, PARALLEL_FROM, UsageError, build_parser
from gateway.correlate import DEFAULT_TOLERANCE_S
from gateway.decide import Prepared, prepare
from gateway.envelope import DEFAULT_MAX_BYTES, EnvelopeReader
from gateway.metrics import Metrics, version
from gateway.model import RawMessage
from gateway.privacy import mask_message
from gateway.replay import DEFAULT_PAIR_WINDOW_S, replay
from gateway.simulate import simulate

log = logging.getLogger("aes_gateway.cli")

# `quarantine replay`: how many messages, and their batches, read from the claimed store
Requeue = Callable[[Store], Awaitable[tuple[int, AsyncIterator[list[Prepared]]]]]


INTERRUPTED: Final = ("interrupted: every message decided so far is stored; run the same "
                      "command again to go on from there")
INTERRUPTED_COPY: Final = {
    "backup": "interrupted: nothing half-written is left; a backup is there only if it was "
              "complete",
    "restore": "interrupted: the store is whole, the old one or, if the restore had finished, "
               "the backup",
}
INTERRUPTED_TEMPORARY: Final = ("interrupted: without --store the store was a temporary one, "
                                "now gone; give --store PATH to be able to go on after a stop")


def main(argv: Sequence[str] | None = None) -> int:
    logs.setup()
    args = build_parser().parse_args(argv)
    # A command that decides messages into a store (replay, quarantine replay) stops on
    # SIGTERM (a service manager, `kill`) as on Ctrl-C: asyncio cancels it, its store is
    # closed, and it says how to go on. `run` installs its own graceful stop for both; the
    # other commands keep the default, an immediate end.
    deciding = args.command == "replay" or getattr(args, "action", None) == "replay"
    copying = args.command in ("backup", "restore")  # SIGTERM too leaves no half-written file
    terminated: list[int] = []

    def terminate(signum: int, _: object) -> None:
        terminated.append(signum)
        signal.raise_signal(signal.SIGINT)

    if deciding or copying:
        signal.signal(signal.SIGTERM, terminate)
    try:
        done = _dispatch_at_once(args)  # no event loop: Ctrl-C ends them at once
        return done if done is not None else int(asyncio.run(_dispatch(args)) or 0)
    except BrokenPipeError:  # `--output - | head`: the reader has had enough, as with any tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 128 + signal.SIGPIPE
    except (UsageError, InputError, StoreError, config.ConfigError, OSError) as exc:
        print(f"aes-gateway: error: {logs.mask(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if deciding:
            temporary = args.command == "replay" and args.store is None
            print(f"aes-gateway: {INTERRUPTED_TEMPORARY if temporary else INTERRUPTED}",
                  file=sys.stderr)
        elif copying:
            print(f"aes-gateway: {INTERRUPTED_COPY[args.command]}", file=sys.stderr)
        return 128 + (terminated[0] if terminated else signal.SIGINT)
    except Exception:  # a bug: Python's own traceback would be plain text, any CPR unmasked
        log.critical("aes-gateway %s failed; please report this line (aes-gateway %s)",
                     args.command, version(), exc_info=True)
        return 1


def _dispatch_at_once(args: argparse.Namespace) -> int | None:
    """The commands with nothing to wait for; None for the others."""
    command: str = args.command
    if command == "schema":
        print(json.dumps(canonical.json_schema(), indent=2))
        return 0
    if command == "simulate":
        _simulate(args.outdir, args.cases, args.seed, args.bad_share)
        return 0
    if command == "backup":  # the copy is SQLite's, in one step; nothing to wait on
        made = sqlite_backup.backup(_existing(args.store), args.dest, args.keep)
        if args.metrics is not None:
            sqlite_backup.write_metrics(args.metrics, made)
        _write_json("-", msgspec.to_builtins(made))
        return 0
    if command == "restore":
        _write_json("-", msgspec.to_builtins(sqlite_backup.restore(args.backup, args.store)))
        return 0
    if command == "config":
        if (args.file is None) == (args.config is None):
            raise UsageError("config check takes one configuration: FILE or --config FILE")
        loaded = config.load(args.config or args.file)
        print("\n".join(["configuration is valid:", *config_explain.explain(loaded)]))
        return 0
    return None


async def _dispatch(args: argparse.Namespace) -> int:
    command: str = args.command
    if command == "replay":
        return await _replay(args)
    if command == "quarantine":
        return await _quarantine(args)
    if command == "run":
        from adapters import runtime  # the live service's dependencies load only here

        loaded = config.load(args.config)
        runtime.freeze_startup_heap()
        await runtime.run(loaded, args.until_idle)
        return 0
    if command == "report":
        async with await Store.open(_existing(args.store)) as store:
            rows = await store.migration_report()
        if args.format == "json":
            _write_json("-", rows)
        elif args.format == "csv":
            sys.stdout.write(report.csv_text(rows))
        else:
            print(report.table(rows))
        return 0
    if command == "purge":
        async with await Store.open(_existing(args.store)) as store:
            deleted: dict[str, object] = {
                **await store.purge(args.retention_days, args.quarantine_days)}
        before = dt.datetime.now(dt.UTC) - dt.timedelta(days=args.retention_days)
        deleted["replaced_stores"] = sqlite_backup.delete_replaced(args.store, before)
        _write_json("-", deleted)
        return 0
    from gateway.demo import demo  # only the demo needs it

    return await demo(args.workdir, args.cases, args.seed)


def _write_json(target: str, data: object) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if target == "-":
        sys.stdout.write(text)
    else:
        Path(target).write_text(text, encoding="utf-8")


PROGRESS_LOG_EVERY_S = 30.0  # replay's progress in the log, when stderr is no terminal


class _ProgressBar:
    """A bar on the last line of a terminal; log lines (a quarantined message's) scroll past
    above it instead of running into it. With no terminal (a service, cron, a pipe) the
    progress is a log line every PROGRESS_LOG_EVERY_S instead: a replay of millions takes
    minutes, and said nothing until its end."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.enabled = sys.stderr.isatty()
        self._handler = logs.handler() if self.enabled else None
        if self._handler is not None:
            self._handler.status = self.line
        self._started = self._logged_at = time.monotonic()

    def line(self) -> str:
        width = 40
        filled = width * self.done // self.total
        return f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"

    def __call__(self, done: int) -> None:
        self.done = done
        if self.enabled:
            sys.stderr.write(self.line())
            sys.stderr.flush()
            return
        now = time.monotonic()
        if now - self._logged_at >= PROGRESS_LOG_EVERY_S and done < self.total:
            self._logged_at = now
            rate = done / max(now - self._started, 1e-9)
            log.info("replay: %d of %d messages (%.1f %%), %.0f msg/s", done, self.total,
                     100 * done / self.total, rate,
                     extra={"messages": done, "total": self.total, "rate": round(rate)})

    def close(self) -> None:
        if self._handler is not None:
            self._handler.status = None
        if self.enabled:
            sys.stderr.write("\n")


def parse_workers(files: int) -> int:
    """Parse worker processes for a replay of this many files: one once there is more than a
    moment's work and a second core to do it on."""
    return 1 if files >= PARALLEL_FROM and (os.cpu_count() or 1) > 1 else 0


async def run_replay(
    inputs: Sequence[Path], store_path: Path, output: str, batch_size: int = DEFAULT_BATCH,
    tolerance_s: int = DEFAULT_TOLERANCE_S, max_bytes: int = DEFAULT_MAX_BYTES,
    workers: int | None = None, metrics_path: str | None = None,
    pair_window_s: int = DEFAULT_PAIR_WINDOW_S, close_windows: bool = False,
    requeue: Requeue | None = None,
) -> dict[str, object]:
    """Replay files into the store at `store_path`; returns the summary. `requeue` gives
    the messages instead (how many, and their batches), once the store is claimed
    (`quarantine replay`)."""
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    files = list_inputs(inputs)
    async with await Store.open(store_path, bulk=True, claim=True) as store:
        total, batches = (len(files), None) if requeue is None else await requeue(store)
        sink = JsonlSink(output, name="replay-output")
        # A sink new to this store starts a new file; a resumed one continues its file.
        sink.open(truncate=await store.sink_progress(sink.name) is None)
        bar = _ProgressBar(total)
        started = time.monotonic()
        try:
            if batches is None:
                workers = parse_workers(total) if workers is None else workers
                batches = prepared_batches(files, batch_size, max_bytes, workers)
            metrics = Metrics(CollectorRegistry()) if metrics_path else None
            tally = await replay(batches, store, sink, tolerance_s, bar, metrics, pair_window_s,
                                 close_windows)
            if metrics is not None and metrics_path is not None:
                metrics.store_bytes.set(store.size_bytes())
                write_to_textfile(metrics_path, metrics.registry)
        finally:
            bar.close()
            sink.close()
        summary = tally.summary()
        counts = {name: summary[name]
                  for name in ("messages", "emitted", "duplicates", "quarantined")}
        log.info("replay done: %(messages)d messages, %(emitted)d emitted, %(duplicates)d "
                 "duplicates, %(quarantined)d quarantined", counts,
                 extra={**counts, "seconds": round(time.monotonic() - started, 2)})
        return {**summary, "overlap": await store.overlap()}


async def _replay(args: argparse.Namespace) -> int:
    if args.summary == "-" and args.output == "-":  # the summary would end the JSON Lines
        raise UsageError("--summary - and the events (--output -, the default) would share "
                         "stdout: give one of them a file")
    with tempfile.TemporaryDirectory(prefix="aes-gateway-") as tmp:
        store_path = args.store or Path(tmp) / "replay.db"
        summary = await run_replay(
            args.inputs, store_path, args.output, args.batch_size, args.tolerance,
            args.max_bytes, args.workers, args.metrics, int(args.pair_window_hours * 3600),
            args.close_windows,
        )
    if args.summary:
        _write_json(args.summary, summary)
    return 0


def _simulate(outdir: Path, cases: int, seed: int, bad_share: float) -> dict[str, object]:
    if cases < 1:
        raise UsageError("--cases must be at least 1")
    old = sorted(outdir.glob("*.xml")) if outdir.is_dir() else []
    if old and not (outdir / "answer-key.json").exists():
        # not an earlier simulation's: perhaps a real capture, which must never be deleted
        raise UsageError(f"{str(outdir)!r} holds {len(old)} *.xml files that simulate did not "
                         "write (no answer-key.json); give an empty or new directory")
    sim = simulate(cases, seed, bad_share)
    outdir.mkdir(parents=True, exist_ok=True)
    width = len(str(len(sim.messages)))
    for earlier in old:  # an earlier simulation's, replaced
        earlier.unlink()
    for index, message in enumerate(sim.messages, start=1):
        (outdir / f"{index:0{max(width, 6)}d}.xml").write_bytes(message.body)
    key = sim.answer_key()
    _write_json(str(outdir / "answer-key.json"), key)
    return key


def _existing(store: Path) -> Path:
    """The store of an operator's command: a mistyped path is an error, not a new, empty store
    that reports nothing and purges nothing."""
    if not store.exists():
        raise UsageError(f"no store at {str(store)!r}")
    return store


async def _quarantine(args: argparse.Namespace) -> int:
    if args.action == "replay":
        summary = await _retry_quarantined(_existing(args.store), args.id, args.output,
                                           args.max_bytes)
        if args.output == "-":  # after the events, the summary would break their JSON Lines
            sys.stderr.write(json.dumps(summary, indent=2) + "\n")
        else:
            _write_json("-", summary)
        return 0
    async with await Store.open(_existing(args.store)) as store:
        if args.action == "list":
            async for page in store.quarantined_pages(with_body=False):
                for row in page:
                    print(logs.mask(json.dumps({
                        "id": row.seq, "message_key": row.message_key, "version": row.version,
                        "reason": row.reason, "detail": row.detail, "source": row.source})))
            return 0
        if args.action == "show":
            if args.id is None:
                raise UsageError("quarantine show needs an ID")
            rows = [row async for page in store.quarantined_pages(args.id) for row in page]
            if not rows:
                raise UsageError(f"no quarantined message with id {args.id}")
            row = rows[0]
            if args.raw:  # asked for by name: the bytes as they came
                sys.stdout.buffer.write(row.body)
                return 0
            fields = msgspec.to_builtins(row)
            fields["id"] = fields.pop("seq")
            fields.pop("body")
            print(logs.mask(json.dumps(fields, indent=2)))  # a detail quotes the input
            sys.stdout.write(mask_message(row.body) + "\n")
            return 0
    raise UsageError(f"unknown quarantine action {args.action!r}")


async def _retry_quarantined(
    store_path: Path, quarantine_id: int | None, output: str, max_bytes: int
) -> dict[str, object]:
    """Decides quarantined messages again. Each leaves the quarantine in the transaction that
    decides it anew: a replay stopped midway leaves the rest quarantined, none lost."""

    async def requeue(store: Store) -> tuple[int, AsyncIterator[list[Prepared]]]:
        # only what is quarantined now: one refused again gets a later id
        upto, count = await store.quarantine_extent(quarantine_id)
        return count, _quarantined_batches(store, quarantine_id, upto, max_bytes)

    return await run_replay([], store_path, output, max_bytes=max_bytes, requeue=requeue)


async def _quarantined_batches(
    store: Store, quarantine_id: int | None, upto: int, max_bytes: int
) -> AsyncIterator[list[Prepared]]:
    """The quarantined messages as they first arrived (body, source, receive time), a page
    at a time, each page parsed here; the store is told which rows they are."""
    reader = EnvelopeReader(max_bytes=max_bytes)
    async for page in store.quarantined_pages(quarantine_id, upto=upto):
        raws: dict[RawMessage, list[QuarantineRow]] = {}
        for row in page:
            raw = RawMessage(row.body, row.source,
                             dt.datetime.fromtimestamp(row.received_at, dt.UTC))
            raws.setdefault(raw, []).append(msgspec.structs.replace(row, body=b""))
        store.retry(raws)
        yield [prepare(raw, reader) for raw in raws]


if __name__ == "__main__":
    raise SystemExit(main())
