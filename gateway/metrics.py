"""Every metric in one place; the registry is passed in, so each test gets a fresh one.

Names are fixed: dashboards and alert rules depend on them. No label ever carries a CPR or a
case id: labels are versions, outcomes, kinds, methods, reasons and sink or source names.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from gateway.decide import Prepared, Result
from gateway.model import Outcome, Reason, Version

# seconds to days: a twin may follow within the same second or a week later
LAG_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400,
               2 * 86400, 3 * 86400, 5 * 86400, 7 * 86400, 14 * 86400)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
VERSIONS = (Version.V2_2.value, Version.V3_0.value, "unknown")
PAIR_OUTCOMES = ("both", "only_2_2", "only_3_0")
# why a push was answered 40: the receiver is stopping, the intake is full, the bodies held
# are at max_held_bytes, the body or the outcome did not come within timeout_seconds, the
# store failed
PUSH_NOT_NOW = ("shutting_down", "intake_full", "held_bytes", "body_timeout", "commit_timeout",
                "store_failed")


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.messages = Counter("aes_gateway_messages", "Messages by version and outcome",
                                ["version", "outcome"], registry=registry)
        self.duplicates = Counter("aes_gateway_duplicates", "Duplicates suppressed, by kind",
                                  ["kind"], registry=registry)
        self.matches = Counter("aes_gateway_matches",
                               "Cross-version twins by how they were found; ambiguous: not merged",
                               ["method"], registry=registry)
        self.lag = Histogram("aes_gateway_cross_version_lag_seconds",
                             "Time between the first and the second version of an event",
                             ["first_version"], buckets=LAG_BUCKETS, registry=registry)
        self.pairs = Counter("aes_gateway_pair_outcomes",
                             "Events whose pairing window closed, by the versions seen in it",
                             ["outcome"], registry=registry)
        self.quarantined = Counter("aes_gateway_quarantined", "Quarantined messages by reason",
                                   ["version", "reason"], registry=registry)
        self.conflicts = Counter("aes_gateway_conflicts",
                                 "Case links across different people: counted, never merged",
                                 registry=registry)
        self.case_links = Counter("aes_gateway_case_links", "Old/new case id links learned",
                                  registry=registry)
        self.backlog = Gauge("aes_gateway_outbox_backlog", "Events not yet relayed to a sink",
                             ["sink"], registry=registry)
        self.oldest_unsent = Gauge("aes_gateway_outbox_oldest_unsent_age_seconds",
                                   "Age of the oldest event not yet relayed to a sink",
                                   ["sink"], registry=registry)
        self.sink_stalled = Gauge("aes_gateway_sink_stalled",
                                  "1 while a sink's last send failed, or one has hung for 10 s",
                                  ["sink"], registry=registry)
        self.store_bytes = Gauge("aes_gateway_store_size_bytes", "Store file size",
                                 registry=registry)
        self.parse_worker_deaths = Counter(
            "aes_gateway_parse_worker_deaths", "Parse worker processes that died (each is "
            "replaced after a pause; the event loop parses meanwhile)", registry=registry)
        self.purge_failures = Counter("aes_gateway_retention_purge_failures",
                                      "Retention purges that failed (each retried in 5 min)",
                                      registry=registry)
        self.latency = Histogram("aes_gateway_receive_to_commit_seconds",
                                 "From receiving a message to committing its outcome",
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.source_connected = Gauge("aes_gateway_source_connected",
                                      "1 when the source is connected", ["source"],
                                      registry=registry)
        self.source_last_message = Gauge("aes_gateway_source_last_message_timestamp_seconds",
                                         "When the source last delivered a message",
                                         ["source"], registry=registry)
        self.store_writable = Gauge("aes_gateway_store_writable", "1 when commits succeed",
                                    registry=registry)
        self.throttled = Gauge("aes_gateway_intake_throttled",
                               "1 while a lagging sink holds the intake back", registry=registry)
        self.push_not_now = Counter(
            "aes_gateway_push_not_now",
            "Pushes answered StatusKode 40 (cannot receive now; BFO pushes them again later)",
            ["source", "reason"], registry=registry)
        Info("aes_gateway_build", "Version of aes-gateway", registry=registry).info(
            {"version": version()})
        self._zero()

    def _zero(self) -> None:
        """Every label value exists from the start, so rates and alerts see 0, not nothing."""
        for version in VERSIONS:
            for outcome in Outcome:
                self.messages.labels(version, outcome.value)
        for kind in ("redelivery", "same_version", "cross_version"):
            self.duplicates.labels(kind)
        for method in ("legacy_id", "learned_link", "fuzzy", "ambiguous"):
            self.matches.labels(method)
        for pair in PAIR_OUTCOMES:
            self.pairs.labels(pair)
        for version in VERSIONS:
            self.lag.labels(version)
            for reason in Reason:
                self.quarantined.labels(version, reason.value)

    def push_source(self, source: str) -> Callable[[str], None]:
        """What a push receiver calls with the reason of each answer 40 (PUSH_NOT_NOW)."""
        for reason in PUSH_NOT_NOW:
            self.push_not_now.labels(source, reason)
        return lambda reason: self.push_not_now.labels(source, reason).inc()

    def observe(self, batch: Sequence[Prepared], results: Sequence[Result]) -> None:
        """The pipeline's result hook: one outcome per message, the same as it was acked on."""
        now = time.time()
        for item, result in zip(batch, results, strict=True):
            version = result.version.value if result.version else "unknown"
            self.messages.labels(version, result.outcome.value).inc()
            if result.duplicate_kind is not None:
                self.duplicates.labels(result.duplicate_kind.value).inc()
            if result.match is not None:
                self.matches.labels(result.match.value).inc()
            if result.lag_seconds is not None:
                self.lag.labels(result.first_version or "unknown").observe(
                    max(result.lag_seconds, 0))
            if result.reason is not None:
                self.quarantined.labels(version, result.reason.value).inc()
            if result.conflict:
                self.conflicts.inc()
            if result.linked:
                self.case_links.inc()
            self.latency.observe(max(now - item.raw.received_at.timestamp(), 0.0))

    def pairs_closed(self, outcomes: Mapping[str, int]) -> None:
        for outcome, count in outcomes.items():
            self.pairs.labels(outcome).inc(count)


def version() -> str:
    """The installed aes-gateway's version (`--version`, `aes_gateway_build_info`)."""
    try:
        return metadata.version("aes-gateway")
    except metadata.PackageNotFoundError:
        return "unknown"
