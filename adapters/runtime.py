"""Wiring for `aes-gateway run`: configuration -> adapters -> the service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from adapters.amqp import AmqpSink, AmqpSource, plain_connector
from adapters.files import JsonlSink
from adapters.mqtt import MqttSink
from adapters.push import PushReceiver
from adapters.sqlite import Store
from gateway import config as cfg
from gateway.envelope import EnvelopeReader
from gateway.pipeline import Pipeline, Relay
from gateway.ports import Delivery, Sink
from gateway.privacy import CprFilter
from gateway.service import Service, Source
from gateway.workers import ParsePool

log = logging.getLogger("aes_gateway.runtime")


def _source(
    spec: cfg.AmqpSource | cfg.PushSource, intake: asyncio.Queue[Delivery], max_bytes: int
) -> Source:
    if isinstance(spec, cfg.PushSource):
        return PushReceiver(spec, intake, max_bytes)
    if spec.sts is not None:
        from adapters.sts import token_connector  # only the Beskedfordeler needs it

        return AmqpSource(spec, intake, token_connector(spec.url, spec.tls, spec.sts))
    return AmqpSource(spec, intake, plain_connector(spec.url, spec.tls))


def _relays(
    spec: cfg.AmqpSink | cfg.MqttSink | cfg.JsonlSink, store: Store
) -> tuple[list[Relay], Callable[[], Awaitable[None]]]:
    """The relays feeding one configured sink, and how to close it."""
    if isinstance(spec, cfg.JsonlSink):
        jsonl = JsonlSink(spec.path, name=f"jsonl:{Path(spec.path).resolve()}",
                          rotate_bytes=spec.rotate_bytes)
        jsonl.open(truncate=False)

        async def close_file() -> None:
            jsonl.close()

        sink: Sink = jsonl
        close = close_file
        window = 1000
    elif isinstance(spec, cfg.MqttSink):
        mqtt = MqttSink(spec, f"mqtt:{spec.topic_prefix}@{spec.url.rsplit('@', 1)[-1]}")
        sink, close, window = mqtt, mqtt.close, spec.window
    else:
        amqp = AmqpSink(spec, plain_connector(spec.url, spec.tls),
                        f"amqp:{spec.exchange}@{spec.url.rsplit('@', 1)[-1]}")
        sink, close, window = amqp, amqp.close, spec.confirm_window
    relays = [Relay(store, CprFilter(sink, spec.cpr, spec.cpr_secret), window,
                    max_backlog=spec.max_backlog)]
    if isinstance(spec, cfg.AmqpSink) and spec.quarantine_exchange:
        # raw messages hold the CPR in forms no filter can find: with any CPR mode but
        # `full`, the quarantine exchange gets the reason headers and no body
        send = amqp.send_quarantine if spec.cpr == "full" else amqp.send_quarantine_headers
        relays.append(Relay(store, amqp, window, name=f"{amqp.name}:quarantine",
                            fetch=store.quarantine_after, send=send))
    return relays, close


async def _health(service: Service, listen: str) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        body = {"ready": service.ready, "store": service.store_ok,
                "sources": {s.name: s.connected for s in service.sources}}
        return web.json_response(body, status=200 if service.ready else 503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    await web.TCPSite(runner, host or None, int(port)).start()
    return runner


async def run(
    config: cfg.Config, until_idle: float | None = None, stop: asyncio.Event | None = None
) -> None:
    """Run the service until SIGTERM/SIGINT (or `stop`), or until idle for `until_idle` s."""
    store = await Store.open(config.store.path)
    intake: asyncio.Queue[Delivery] = asyncio.Queue(maxsize=config.store.batch_size * 4)
    reader = EnvelopeReader(config.matching.beskedtypes, config.matching.max_message_bytes)
    pool = None
    if config.processing.parse_workers > 0:
        pool = ParsePool(config.processing.parse_workers, config.matching.beskedtypes,
                         config.matching.max_message_bytes)
    pipeline = Pipeline(store, reader, config.matching.tolerance_seconds, parse_pool=pool)
    sources = [_source(s, intake, config.matching.max_message_bytes) for s in config.sources]
    relays: list[Relay] = []
    closers: list[Callable[[], Awaitable[None]]] = []
    for spec in config.sinks:
        sink_relays, close = _relays(spec, store)
        relays += sink_relays
        closers.append(close)
    service = Service(pipeline, intake, sources, relays, config.store.batch_size,
                      config.store.batch_wait_ms / 1000, [*closers, store.close])
    health = await _health(service, config.http.listen) if config.http.listen else None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await service.run(stop, until_idle)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        if health is not None:
            with contextlib.suppress(Exception):
                await health.cleanup()
        if pool is not None:
            pool.close()
