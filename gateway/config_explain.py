"""What a configuration will do, in words, for `aes-gateway config check`: every source and
sink with the settings an operator checks first, and no password."""

from __future__ import annotations

import os
import re

from gateway.config import AmqpSink, AmqpSource, Config, MqttSink, store_file


def explain(config: Config) -> list[str]:
    """What the configuration will do, for `config check`."""
    lines = [f"store: {store_file(config)} (retention "
             f"{config.store.retention_days} days, "
             f"group commit of up to {config.store.batch_size} messages)"]
    for source in config.sources:
        if isinstance(source, AmqpSource):
            auth = "SASL EXTERNAL with an STS token" if source.sts else "user/password"
            lines.append(f"source: AMQP queue {source.queue!r} at {redact(source.url)} ({auth}, "
                         f"prefetch {source.prefetch})")
        else:
            scheme = "https" if source.tls else "http"
            lines.append(f"source: push receiver on {scheme}://{source.listen}{source.path} "
                         + bounds(source.max_connections, source.idle_seconds)
                         + f", {source.max_held_bytes / 2**20:g} MiB of bodies held at most"
                         " (past it: 40)")
    for sink in config.sinks:
        if isinstance(sink, AmqpSink):
            what = (f"AMQP exchange {sink.exchange!r} at {redact(sink.url)}"
                    f" (quarantine to {sink.quarantine_exchange!r})")
        elif isinstance(sink, MqttSink):
            what = f"MQTT topics {sink.topic_prefix}/<kommune>/<event_type> at {redact(sink.url)}"
        elif sink.path == "-":
            what = "JSON Lines on standard output"
        else:  # absolute, as the store's: the file a gateway started here writes
            keep = sink.rotated_keep_days(config.store)
            rotate = (f"a new file past {sink.rotate_bytes / 2**20:g} MiB, rotated files kept "
                      + (f"{keep} days" if keep else "for ever")
                      if sink.rotate_bytes else "never rotated")
            mode = sink.file_mode()
            permissions = "new files 0600" if mode is None else f"mode {mode:04o}"
            what = f"JSON Lines file {os.path.abspath(sink.path)} ({permissions}, {rotate})"
        lines.append(f"sink: {what}, CPR {sink.cpr}")
    http = config.http
    lines.append(f"http: {http.listen} {bounds(http.max_connections, http.idle_seconds)}"
                 if http.listen else "http: off")
    return lines


def bounds(max_connections: int, idle_seconds: float) -> str:
    """An HTTP port's connection bounds (adapters/http_limits.py), as both ports say them."""
    return f"(up to {max_connections} connections, idle ones closed after {idle_seconds:g} s)"


def redact(url: str) -> str:
    """`url` with its password shown as ***."""
    return re.sub(r"//([^:/@]+):([^@]*)@", r"//\1:***@", url)

