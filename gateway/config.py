"""Configuration: TOML decoded into msgspec Structs, validated at start-up.

Unknown keys are errors that name the key. A string value `${NAME}` is read from the
environment variable NAME, so secrets stay out of the file.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import msgspec

from gateway.correlate import DEFAULT_PAIR_WINDOW_HOURS, DEFAULT_TOLERANCE_S
from gateway.envelope import DEFAULT_MAX_BYTES
from gateway.formats import DEFAULT_BESKEDTYPES
from gateway.model import Version

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key and why."""


class Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class TlsConfig(Strict):
    ca_file: str | None = None  # trust anchors for the peer (default: the system's)
    cert_file: str | None = None  # our certificate (client cert, or the push server's)
    key_file: str | None = None
    require_client_cert: bool = False  # push receiver: verify the BFO function certificate
    # Push receiver: of the certificates ca_file vouches for (an OCES3 CA vouches for every
    # Danish organisation's), accept only those whose subject has every attribute of one
    # entry, e.g. "organizationIdentifier=NTRDK-19435075" or "CN=...,O=...". Empty: any.
    allowed_clients: list[str] = []


class StsConfig(Strict):
    """KOMBIT's security token service (REST variant); the token is the SASL EXTERNAL response."""

    url: str
    cvr: str
    tls: TlsConfig  # mutual TLS with the organisation's OCES3 certificate
    entity_id: str = "http://entityid.kombit.dk/service/bfo_modtag/2"
    refresh_before_seconds: int = 300


class AmqpSource(Strict, tag_field="type", tag="amqp"):
    url: str
    queue: str
    # Plain AMQP to anything but this machine carries CPR numbers unencrypted: refused unless
    # this key, whose name says what it is, is set.
    insecure_plaintext: bool = False
    prefetch: int = 1000
    tls: TlsConfig | None = None
    sts: StsConfig | None = None  # set for the Beskedfordeler: SASL EXTERNAL with a SAML token


class PushSource(Strict, tag_field="type", tag="push"):
    listen: str = "0.0.0.0:8443"
    insecure_plaintext: bool = False  # plain HTTP on a non-loopback address
    # Accept pushes from any client on a non-loopback address (TLS without a client
    # certificate): only behind a proxy that checks the Beskedfordeler's certificate itself.
    insecure_any_client: bool = False
    path: str = "/"
    tls: TlsConfig | None = None
    timeout_seconds: float = 30.0
    # A connection with no request in flight (one that never sent any, too) is closed after
    # this long; at most max_connections are open at once, and more are closed as they come.
    idle_seconds: float = 60.0
    max_connections: int = 256
    # Bytes of push bodies held in memory (read, or waiting for their outcomes) at once; a push
    # that would go past it is answered 40 (BFO pushes it again later). One alone always fits.
    max_held_bytes: int = 64 * 1024 * 1024


CprMode = Literal["full", "pseudonymised", "omitted"]


MIN_CPR_SECRET: Final = 16  # characters of the pseudonymisation key


class SinkCommon(Strict):
    # What a sink's consumers see of the CPR: as is, a keyed HMAC-SHA256 (one person's events
    # still join), or null.
    cpr: CprMode = "full"
    cpr_secret: str | None = None  # the HMAC key for `pseudonymised`; use ${NAME}
    # The intake is throttled while this sink has more than this many events not yet relayed.
    max_backlog: int = 100_000
    insecure_plaintext: bool = False  # plain amqp:// or mqtt:// to a non-loopback host


class AmqpSink(SinkCommon, tag_field="type", tag="amqp", kw_only=True):
    url: str
    exchange: str = "aes.case-events"
    quarantine_exchange: str | None = "aes.quarantine"
    confirm_window: int = 256
    tls: TlsConfig | None = None


class MqttSink(SinkCommon, tag_field="type", tag="mqtt", kw_only=True):
    url: str  # mqtt://host:1883 or mqtts://host:8883; user:password@ allowed
    topic_prefix: str = "aes/case-events"
    window: int = 256  # QoS 1 publishes in flight at once
    tls: TlsConfig | None = None


class JsonlSink(SinkCommon, tag_field="type", tag="jsonl", kw_only=True):
    path: str
    rotate_bytes: int = 100 * 1024 * 1024  # start a new file past this size; 0: never
    # Each file's permissions, set whatever the umask, on the file found at start and each
    # one begun at rotation: "0640" lets a consumer's group read it. Never any for others: the
    # events name people. Unset: a new file is made 0600, an existing one keeps its own.
    mode: str | None = None
    # Rotated files are deleted this many days after their rotation (their newest event): they
    # name people, as the store does. Unset: the store's retention_days; 0: kept for ever.
    keep_days: int | None = None

    def file_mode(self) -> int | None:
        return None if self.mode is None else int(self.mode, 8)

    def rotated_keep_days(self, store: StoreConfig) -> int:
        """How long a rotated file is kept; 0: for ever."""
        return store.retention_days if self.keep_days is None else self.keep_days


def source_name(source: AmqpSource | PushSource) -> str:
    """A source's name in logs, metrics, /readyz and the broker's list of connections."""
    return (f"amqp:{source.queue}" if isinstance(source, AmqpSource)
            else f"push:{source.listen}")


def sink_name(sink: AmqpSink | MqttSink | JsonlSink) -> str:
    """The name a sink's progress is kept under in the store: its destination, without
    credentials. Two sinks of one name would share one progress, and each skip, after a
    restart, what the other had sent."""
    if isinstance(sink, JsonlSink):
        return f"jsonl:{Path(sink.path).resolve()}"
    kind, where = (("mqtt", sink.topic_prefix) if isinstance(sink, MqttSink)
                   else ("amqp", sink.exchange))
    return f"{kind}:{where}@{sink.url.rsplit('@', 1)[-1]}"


class StoreConfig(Strict):
    path: str = "gateway.db"
    retention_days: int = 400
    quarantine_retention_days: int = 90  # raw refused messages hold personal data
    batch_size: int = 500
    batch_wait_ms: int = 20  # the longest a batch waits to fill
    batch_gap_ms: float = 2.0  # ... and it closes when no message came for this long


class MatchingConfig(Strict):
    tolerance_seconds: int = DEFAULT_TOLERANCE_S
    pair_window_hours: float = DEFAULT_PAIR_WINDOW_HOURS
    max_message_bytes: int = DEFAULT_MAX_BYTES
    beskedtypes: dict[str, Version] = msgspec.field(
        default_factory=lambda: dict(DEFAULT_BESKEDTYPES)
    )


class ProcessingConfig(Strict):
    parse_workers: int = 1  # processes that parse while the event loop commits; 0: in-process


class HttpConfig(Strict):
    listen: str | None = "127.0.0.1:9464"
    # As a push receiver's (see PushSource); Prometheus keeps its connection between scrapes.
    idle_seconds: float = 120.0
    max_connections: int = 32


class Config(Strict):
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    matching: MatchingConfig = msgspec.field(default_factory=MatchingConfig)
    processing: ProcessingConfig = msgspec.field(default_factory=ProcessingConfig)
    sources: list[AmqpSource | PushSource] = msgspec.field(default_factory=list)
    sinks: list[AmqpSink | MqttSink | JsonlSink] = msgspec.field(default_factory=list)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)


def _expand(value: Any, where: str, missing: dict[str, list[str]]) -> Any:
    """`value` with every `${NAME}` read from the environment; a NAME not set is added to
    `missing` with where it is used, so that one error can name them all."""
    if isinstance(value, dict):
        return {k: _expand(v, f"{where}.{k}", missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{where}[{i}]", missing) for i, v in enumerate(value)]
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                missing.setdefault(name, []).append(where)
                return ""
            return os.environ[name]

        return _ENV_REF.sub(lookup, value)
    return value


def _expanded(raw: dict[str, Any]) -> dict[str, Any]:
    missing: dict[str, list[str]] = {}
    expanded: dict[str, Any] = _expand(raw, "$", missing)
    if missing:
        said = "; ".join(f"{name!r} (used at {', '.join(where)})"
                         for name, where in missing.items())
        plural = "s" if len(missing) > 1 else ""
        raise ConfigError(f"environment variable{plural} not set: {said}")
    return expanded


LOOPBACK = ("127.", "localhost", "::1", "[::1]")


def _host(url: str) -> str:
    return urlsplit(url).hostname or ""


def _plaintext_refused(where: str, url: str, secure_schemes: tuple[str, ...]) -> ConfigError:
    return ConfigError(
        f"{where}: {urlsplit(url).scheme}:// to {_host(url)!r} would carry personal data "
        f"unencrypted; use {' or '.join(s + '://' for s in secure_schemes)}, or set "
        "insecure_plaintext = true if you really mean it"
    )


# Certificate subject attributes an allowed_clients entry may name: the short names (RFC 4514)
# and the long ones Python's ssl module reports, both to the long one.
SUBJECT_ATTRIBUTES: Final[dict[str, str]] = {
    "CN": "commonName", "O": "organizationName", "OU": "organizationalUnitName",
    "C": "countryName", "L": "localityName", "ST": "stateOrProvinceName",
    "serialNumber": "serialNumber", "organizationIdentifier": "organizationIdentifier",
}
SUBJECT_ATTRIBUTES.update({name: name for name in list(SUBJECT_ATTRIBUTES.values())})


def subject_rule(entry: str) -> frozenset[tuple[str, str]]:
    """`"CN=Beskedfordeler, O=KOMBIT A/S"` -> {("commonName", ...), ("organizationName", ...)}.
    Values cannot hold commas; ValueError for anything else than known `name=value` pairs."""
    pairs = set()
    for part in entry.split(","):
        name, equals, value = part.strip().partition("=")
        if not equals or not value.strip() or name.strip() not in SUBJECT_ATTRIBUTES:
            raise ValueError(f"{part.strip()!r} is not one of "
                             f"{', '.join(sorted(SUBJECT_ATTRIBUTES))} = value")
        pairs.add((SUBJECT_ATTRIBUTES[name.strip()], value.strip()))
    return frozenset(pairs)


def _check_client_rules(where: str, tls: TlsConfig) -> None:
    if not tls.allowed_clients:
        return
    if not tls.require_client_cert:
        raise ConfigError(f"{where}.tls.allowed_clients needs require_client_cert = true")
    for entry in tls.allowed_clients:
        try:
            subject_rule(entry)
        except ValueError as exc:
            raise ConfigError(f"{where}.tls.allowed_clients: {exc}") from None


def _check_transport(config: Config) -> None:
    """TLS (with verification, which is always on) for everything that leaves this machine."""
    for index, source in enumerate(config.sources):
        where = f"sources[{index}]"
        if isinstance(source, AmqpSource):
            if (source.url.startswith("amqp://") and not _host(source.url).startswith(LOOPBACK)
                    and not source.insecure_plaintext):
                raise _plaintext_refused(where, source.url, ("amqps",))
            if source.sts and not source.sts.url.startswith("https://"):
                raise ConfigError(f"{where}.sts.url must be https://")
        elif (source.tls is None and not source.listen.startswith(LOOPBACK)
              and not source.insecure_plaintext):
            raise ConfigError(f"{where}: a push receiver on {source.listen!r} needs [tls], or "
                              "insecure_plaintext = true if you really mean it")
        elif source.tls is not None:
            _check_client_rules(where, source.tls)
            if (not source.tls.require_client_cert and not source.listen.startswith(LOOPBACK)
                    and not source.insecure_any_client):
                # anyone who reaches the port could push case events emitted as AES's
                raise ConfigError(
                    f"{where}: a push receiver on {source.listen!r} would take case events "
                    "from any client: set [tls] require_client_cert = true (and "
                    "allowed_clients), or insecure_any_client = true behind a proxy that "
                    "checks the Beskedfordeler's certificate")
    for index, sink in enumerate(config.sinks):
        if isinstance(sink, JsonlSink) or sink.insecure_plaintext:
            continue
        plain = sink.url.startswith(("amqp://", "mqtt://"))
        if plain and not _host(sink.url).startswith(LOOPBACK):
            secure = ("amqps",) if isinstance(sink, AmqpSink) else ("mqtts",)
            raise _plaintext_refused(f"sinks[{index}]", sink.url, secure)


def _validate(config: Config) -> None:
    if not config.sources:
        raise ConfigError("no [[sources]]: the gateway would have nothing to read")
    if not config.sinks:
        raise ConfigError("no [[sinks]]: the gateway would have nowhere to emit")
    if (config.store.batch_size < 1 or config.store.batch_wait_ms < 0
            or config.store.batch_gap_ms < 0):
        raise ConfigError("store.batch_size must be at least 1, batch_wait_ms and batch_gap_ms"
                          " at least 0")
    _validate_keeping(config.store, config.matching)
    if config.processing.parse_workers < 0:
        raise ConfigError("processing.parse_workers must be at least 0")
    for index, source in enumerate(config.sources):
        if isinstance(source, AmqpSource) and source.prefetch < 1:
            raise ConfigError(f"sources[{index}].prefetch must be at least 1")
        if isinstance(source, AmqpSource) and source.sts and not source.url.startswith("amqps"):
            raise ConfigError(f"sources[{index}]: SASL EXTERNAL with a token needs amqps://")
        if isinstance(source, PushSource) and (
                not source.timeout_seconds > 0 or not source.idle_seconds > 0
                or source.max_connections < 1 or source.max_held_bytes < 1):
            raise ConfigError(f"sources[{index}]: timeout_seconds and idle_seconds must be above "
                              "0, max_connections and max_held_bytes at least 1")
    if not config.http.idle_seconds > 0 or config.http.max_connections < 1:
        raise ConfigError("http: idle_seconds must be above 0, max_connections at least 1")
    for index, sink in enumerate(config.sinks):
        if isinstance(sink, AmqpSink) and sink.confirm_window < 1:
            raise ConfigError(f"sinks[{index}].confirm_window must be at least 1")
        if isinstance(sink, JsonlSink) and (sink.keep_days or 0) < 0:
            raise ConfigError(f"sinks[{index}].keep_days must be at least 0 (0: for ever)")
        if isinstance(sink, MqttSink) and not sink.url.startswith(("mqtt://", "mqtts://")):
            raise ConfigError(f"sinks[{index}].url must start with mqtt:// or mqtts://")
        if sink.cpr == "pseudonymised" and not sink.cpr_secret:
            raise ConfigError(f"sinks[{index}]: cpr = 'pseudonymised' needs cpr_secret")
        if sink.cpr == "pseudonymised" and len(sink.cpr_secret or "") < MIN_CPR_SECRET:
            # whoever knows one person's CPR and pseudonym can try every short key, and
            # with the key, every CPR (there are only some 10^9)
            raise ConfigError(f"sinks[{index}].cpr_secret is shorter than {MIN_CPR_SECRET} "
                              "characters: use a random one, e.g. `openssl rand -hex 32`")
        if sink.max_backlog < 1:
            raise ConfigError(f"sinks[{index}].max_backlog must be at least 1")
        if isinstance(sink, JsonlSink) and sink.mode is not None:
            _validate_mode(f"sinks[{index}].mode", sink.mode)
    names = [sink_name(sink) for sink in config.sinks]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise ConfigError(f"sinks[{names.index(name)}] and sinks[{index}] are the same "
                              f"destination ({name}): give it one sink")


def _validate_mode(where: str, mode: str) -> None:
    """An octal file mode for the owner and a group: a file of events is never for others."""
    if not re.fullmatch(r"0?[0-7]{3}", mode):
        raise ConfigError(f"{where} {mode!r} is not an octal file mode such as '0640'")
    if int(mode, 8) & 0o007:
        raise ConfigError(f"{where} {mode!r} gives others access to the events, which name "
                          "people: give the readers a group (e.g. '0640')")
    if not int(mode, 8) & 0o200:
        raise ConfigError(f"{where} {mode!r} does not let the gateway write the file")


def _validate_keeping(store: StoreConfig, matching: MatchingConfig) -> None:
    """What the store keeps, and for how long, against what matching needs of it."""
    if not store.path.strip():
        raise ConfigError("store.path is empty")
    if store.retention_days < 1 or store.quarantine_retention_days < 1:
        # 0 or less: the next hourly purge deletes what was just decided, and with it what
        # tells a redelivery or a twin from a new event (or a refused message, unread)
        raise ConfigError("store.retention_days and quarantine_retention_days must be at "
                          "least 1")
    if not matching.pair_window_hours > 0 or matching.tolerance_seconds < 0:
        raise ConfigError("matching.pair_window_hours must be above 0, tolerance_seconds at "
                          "least 0")
    if store.retention_days * 24 < matching.pair_window_hours:
        raise ConfigError(f"store.retention_days ({store.retention_days}) is shorter than "
                          f"matching.pair_window_hours ({matching.pair_window_hours:g}): an "
                          "event would be purged while its twin may still come")
    if matching.max_message_bytes < 1:
        raise ConfigError("matching.max_message_bytes must be at least 1")


def parse(text: str) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from exc
    try:
        config = msgspec.convert(_expanded(raw), Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc)) from exc
    _validate(config)
    _check_transport(config)
    return config


def load(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {str(path)!r}: {exc.strerror}") from exc
    return parse(text)


def store_file(config: Config) -> str:
    """The store's absolute path. A relative `store.path` is relative to the working
    directory, not to the configuration file: logged at start and shown by `config check`,
    so that nobody runs a second, empty store by starting from another directory."""
    return os.path.abspath(config.store.path)
