"""Wiring for `aes-gateway run`: configuration -> adapters -> the service."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import logging
import resource
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from adapters.amqp import AmqpSink, AmqpSource, plain_connector
from adapters.http_limits import CappedServer
from adapters.jsonl import JsonlSink, delete_rotated
from adapters.mqtt import MqttSink
from adapters.push import PushReceiver
from adapters.sqlite import Store, StoreError
from adapters.sqlite_backup import delete_replaced
from gateway import config as cfg
from gateway.clock import LiveClock
from gateway.envelope import EnvelopeReader
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline, Relay
from gateway.ports import Delivery, Sink
from gateway.privacy import CprFilter
from gateway.service import Service, Source, SourceWatch
from gateway.workers import ParsePool

log = logging.getLogger("aes_gateway.runtime")


def _source(
    spec: cfg.AmqpSource | cfg.PushSource, intake: asyncio.Queue[Delivery], max_bytes: int,
    metrics: Metrics,
) -> Source:
    if isinstance(spec, cfg.PushSource):
        return PushReceiver(spec, intake, max_bytes,
                            metrics.push_source(cfg.source_name(spec)))
    name = f"source {cfg.source_name(spec)}"  # the connection's, in the broker
    if spec.sts is not None:
        from adapters.sts import token_connector  # only the Beskedfordeler needs it

        return AmqpSource(spec, intake, token_connector(spec.url, spec.tls, spec.sts, name),
                          max_bytes)
    return AmqpSource(spec, intake, plain_connector(spec.url, spec.tls, name), max_bytes)


def _relays(
    spec: cfg.AmqpSink | cfg.MqttSink | cfg.JsonlSink, store: Store
) -> tuple[list[Relay], Callable[[], Awaitable[None]]]:
    """The relays feeding one configured sink, and how to close it."""
    if isinstance(spec, cfg.JsonlSink):
        jsonl = JsonlSink(spec.path, name=cfg.sink_name(spec), rotate_bytes=spec.rotate_bytes,
                          mode=spec.file_mode())
        try:
            jsonl.open(truncate=False)
        except OSError as exc:  # said with the sink it is about, not just the bare path
            raise OSError(f"sink {jsonl.name}: cannot open {spec.path!r}: "
                          f"{exc.strerror or exc}") from exc

        async def close_file() -> None:
            jsonl.close()

        sink: Sink = jsonl
        close = close_file
        window = 1000
    elif isinstance(spec, cfg.MqttSink):
        mqtt = MqttSink(spec, cfg.sink_name(spec))
        sink, close, window = mqtt, mqtt.close, spec.window
    else:
        name = cfg.sink_name(spec)
        amqp = AmqpSink(spec, plain_connector(spec.url, spec.tls, f"sink {name}"), name)
        sink, close, window = amqp, amqp.close, spec.confirm_window
    relays = [Relay(store, CprFilter(sink, spec.cpr, spec.cpr_secret), window,
                    max_backlog=spec.max_backlog)]
    if isinstance(spec, cfg.AmqpSink) and spec.quarantine_exchange:
        # raw messages hold the CPR in forms no filter can find: with any CPR mode but
        # `full`, the quarantine exchange gets the reason headers and no body
        send = amqp.send_quarantine if spec.cpr == "full" else amqp.send_quarantine_headers
        relays.append(Relay(store, amqp, window, name=f"{amqp.name}:quarantine",
                            fetch=store.quarantine_after, send=send, feed="quarantine"))
    return relays, close


OBSERVE_EVERY_S = 5.0  # gauges refreshed, sources' outages seen
PURGE_EVERY_S = 3600.0  # the retention purge
PURGE_RETRY_S = 300.0  # a failed purge tried again: soon, but not at every pass (the log)


async def _observe(
    service: Service, store: Store, metrics: Metrics, config: cfg.Config, clock: LiveClock,
) -> None:
    """Gauges from the store and the sources; sources' outages and held-back quarantine counts
    logged; pairing windows closed on the stream's clock (gateway/clock.py) every minute;
    retention purged hourly."""
    loop = asyncio.get_running_loop()
    window_s = int(config.matching.pair_window_hours * 3600)
    next_close = next_purge = loop.time()
    watch = SourceWatch()
    files_ok = True
    while True:
        watch.update(service.sources)
        service.pipeline.quarantine_log.close_due()  # a count held back while no batch comes
        try:  # the store file and its lock, checked at each batch, and here when none comes
            await store.check_files()
            files_ok = True
        except StoreError as exc:
            service.store_ok = False
            if files_ok:  # said once; each failing batch says it again
                log.error("%s", exc)  # noqa: TRY400 - the message is all; no trace needed
            files_ok = False
        try:
            await _observe_once(service, store, metrics)
        except Exception:  # a metrics pass must never stop the service
            log.debug("metrics pass failed", exc_info=True)
        if loop.time() >= next_close:
            next_close = loop.time() + 60
            try:
                metrics.pairs_closed(await store.close_pairs(clock.now(), window_s))
            except Exception:
                log.warning("closing pairing windows failed; retried in a minute",
                            exc_info=True)
        # The purge deletes personal data past its retention: a failing one must be seen, and
        # is retried in 5 minutes (not at every pass, which would fill the log).
        if loop.time() >= next_purge:
            try:
                deleted = await store.purge(config.store.retention_days,
                                            config.store.quarantine_retention_days)
                log.info("retention purge", extra=deleted)
                await _purge_files(config)
                next_purge = loop.time() + PURGE_EVERY_S
            except Exception:
                log.warning("retention purge failed; retried in 5 minutes", exc_info=True)
                metrics.purge_failures.inc()
                next_purge = loop.time() + PURGE_RETRY_S
        await asyncio.sleep(OBSERVE_EVERY_S)


async def _purge_files(config: cfg.Config) -> None:
    """The files beside the store and the sinks past their retention: they name people too.
    A store that `restore` replaced goes `retention_days` after the restore; the JSON Lines
    sinks' rotated files after their `keep_days`."""
    now = dt.datetime.now(dt.UTC)
    store = Path(config.store.path)
    deleted = await asyncio.to_thread(
        delete_replaced, store, now - dt.timedelta(days=config.store.retention_days))
    if deleted:
        log.info("replaced store past retention deleted", extra={
            "store": str(store), "retention_days": config.store.retention_days,
            "files": ", ".join(deleted)})
    for spec in config.sinks:
        if not isinstance(spec, cfg.JsonlSink) or spec.path == "-":
            continue
        days = spec.rotated_keep_days(config.store)
        if days:
            deleted = await asyncio.to_thread(delete_rotated, spec.path,
                                              now - dt.timedelta(days=days))
            if deleted:
                log.info("rotated files past retention deleted", extra={
                    "sink": cfg.sink_name(spec), "keep_days": days, "files": len(deleted),
                    "newest": deleted[-1]})


async def _observe_once(service: Service, store: Store, metrics: Metrics) -> None:
    loop = asyncio.get_running_loop()
    for relay in service.relays:
        metrics.sink_stalled.labels(relay.name).set(relay.stalled)
        if relay.max_backlog is not None:  # the outbox relays
            count, age = await store.backlog(relay.name)
            metrics.backlog.labels(relay.name).set(count)
            metrics.oldest_unsent.labels(relay.name).set(age or 0)
    metrics.store_bytes.set(store.size_bytes())
    metrics.store_writable.set(service.store_ok)
    metrics.throttled.set(service.throttled)
    for source in service.sources:
        metrics.source_connected.labels(source.name).set(source.connected)
        if source.last_message_at is not None:
            metrics.source_last_message.labels(source.name).set(
                time.time() - (loop.time() - source.last_message_at))


async def _health(
    service: Service, listen: str, http: cfg.HttpConfig, metrics: Metrics
) -> CappedServer:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        body = {"ready": service.ready, "store": service.store_ok,
                "sources": {s.name: s.connected for s in service.sources},
                "sinks_stalled": [r.name for r in service.relays if r.stalled]}
        return web.json_response(body, status=200 if service.ready else 503)

    async def scrape(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", scrape)
    server = CappedServer(app, listen, f"http:{listen}", http.max_connections, http.idle_seconds)
    try:
        await server.start()
    except OSError as exc:  # said with the setting it is about
        raise OSError(f"[http] listen {listen}: {exc.strerror or exc}") from exc
    return server


OPEN_FILES_WANTED = 65536  # when the hard limit is unlimited


def raise_open_files_limit() -> int:
    """The soft limit on open files raised to the hard one; returns the limit now in force.

    systemd gives a service a soft limit of 1 024 (and a hard one of 524 288) unless told
    otherwise: the store, the brokers' connections, the sink files and each push connection
    share it. Raising the soft limit up to the hard one is what the split is for."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):  # a kernel cap (fs.nr_open) below it: keep what there is
            log.info("open files limit kept at %d", soft)
    return int(soft)


def freeze_startup_heap() -> int:
    """Leave the start-up heap (modules, classes, functions: about 50 000 objects, all of them
    permanent) out of every later garbage collection; returns how many objects that is.

    Each full collection scanned that heap and paused the event loop for 30-36 ms, 4 times in
    30 s at 1 000 msg/s, so every message of those moments waited. Frozen, a full collection
    scans only what the service made since, about 1 ms. Called by `aes-gateway run` once
    everything is imported; not by tests that run the service inside their own process.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("start-up heap frozen", extra={"objects": frozen})
    return frozen


async def run(
    config: cfg.Config, until_idle: float | None = None, stop: asyncio.Event | None = None
) -> None:
    """Run the service until SIGTERM/SIGINT/SIGHUP (or `stop`), or idle for `until_idle` s.

    Whatever fails on the way up (a taken HTTP port, a sink file that cannot be opened) closes
    what was opened before it: the store's thread alone would keep the process from exiting.
    """
    async with contextlib.AsyncExitStack() as opened:  # closed in reverse, on any exit
        store = await Store.open(config.store.path, claim=True)
        opened.push_async_callback(store.close)  # again after the service's own close: a no-op
        reader = EnvelopeReader(config.matching.beskedtypes, config.matching.max_message_bytes)
        metrics = Metrics(CollectorRegistry())
        pool = None
        if config.processing.parse_workers > 0:
            pool = ParsePool(config.processing.parse_workers, config.matching.beskedtypes,
                             config.matching.max_message_bytes,
                             on_death=metrics.parse_worker_deaths.inc)
            opened.callback(pool.close)
            pool.start()
        clock = LiveClock()
        pipeline = Pipeline(store, reader, config.matching.tolerance_seconds,
                            [metrics.observe, clock.observe],
                            parse_pool=pool)
        intake: asyncio.Queue[Delivery] = asyncio.Queue(maxsize=config.store.batch_size * 4)
        sources = [_source(s, intake, config.matching.max_message_bytes, metrics)
                   for s in config.sources]
        relays: list[Relay] = []
        closers: list[Callable[[], Awaitable[None]]] = []
        for spec in config.sinks:
            sink_relays, close = _relays(spec, store)
            opened.push_async_callback(_quietly, close)
            relays += sink_relays
            closers.append(close)
        for name, pending in (await store.forget_sinks(r.name for r in relays)).items():
            log.warning("sink %s is no longer configured: its progress is dropped, and the "
                        "%d events it had not taken are no longer kept for it", name, pending)
        service = Service(pipeline, intake, sources, relays, config.store.batch_size,
                          config.store.batch_wait_ms / 1000, config.store.batch_gap_ms / 1000,
                          [*closers, store.close])
        await service.start_relays()  # before the observer's first purge: a new sink keeps rows
        open_files = raise_open_files_limit()  # before the sources take connections
        log.info("gateway starting", extra={
            "store": cfg.store_file(config),
            "sources": [source.name for source in sources],
            "sinks": [relay.name for relay in relays],
            "open_files_limit": open_files})
        if config.http.listen:
            health = await _health(service, config.http.listen, config.http, metrics)
            opened.push_async_callback(_quietly, health.close)
        observer = asyncio.create_task(_observe(service, store, metrics, config, clock))
        opened.push_async_callback(_cancelled, observer)
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # HUP: a closed terminal
            loop.add_signal_handler(signum, _stopping, signum, stop)
            opened.callback(loop.remove_signal_handler, signum)
        for signum in (signal.SIGUSR1, signal.SIGUSR2):  # by default they end the process
            loop.add_signal_handler(signum, _nothing_to_do, signum)
            opened.callback(loop.remove_signal_handler, signum)
        await service.run(stop, until_idle)
    log.info("gateway stopped")


def _stopping(signum: signal.Signals, stop: asyncio.Event) -> None:
    if not stop.is_set():
        log.info("%s: stopping; deciding what was delivered and letting the sinks catch up",
                 signum.name)
    stop.set()


def _nothing_to_do(signum: signal.Signals) -> None:
    """A logrotate rule's `kill -USR1` by habit ended the gateway mid-batch: logs go to
    stderr, and a JSON Lines sink follows a moved file by itself, so there is nothing to
    reopen."""
    log.info("%s: nothing to do (logs go to stderr; a JSON Lines sink begins a new file by "
             "itself when its file is moved); still running", signum.name)


async def _quietly(close: Callable[[], Awaitable[None]]) -> None:
    with contextlib.suppress(Exception):
        await close()


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
