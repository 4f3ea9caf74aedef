"""One outcome per message: parse, recognise redeliveries, correlate, or quarantine. Pure."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Final

import msgspec

from gateway.correlate import CorrelationState, Correlator, Effects
from gateway.envelope import EnvelopeReader, message_key, parse_event
from gateway.model import (
    BadInput,
    DuplicateKind,
    MatchMethod,
    Outcome,
    ParsedEvent,
    RawMessage,
    Reason,
    Version,
)

log = logging.getLogger("aes_gateway.decide")

# A Dannelsestidspunkt more than this after the message was read is a wrong clock or value,
# not a time, and is read as missing (the time read stands in). Taken as the stream's time, one
# such message would move replay's clock years ahead: every pairing window after it would close
# before its twin came, and the live service would keep its event's window open for years.
MAX_FORMED_AHEAD: Final = dt.timedelta(hours=1)


class Prepared(msgspec.Struct, frozen=True, gc=False):
    """A message after the CPU-bound part: parsed, or refused with its reason."""

    raw: RawMessage
    key: str  # BeskedId, or the content hash when no BeskedId can be read
    version: Version | None
    event: ParsedEvent | None
    reason: Reason | None = None
    detail: str | None = None


class Result(msgspec.Struct, gc=False):
    """The recorded outcome of one message."""

    key: str
    version: Version | None
    outcome: Outcome
    event_id: str | None = None
    duplicate_kind: DuplicateKind | None = None
    match: MatchMethod | None = None
    reason: Reason | None = None
    detail: str | None = None
    conflict: bool = False
    lag_seconds: int | None = None
    first_version: str | None = None
    linked: bool = False


def prepare(raw: RawMessage, reader: EnvelopeReader) -> Prepared:
    """Never raises for any input: bad input becomes a reason. So does a failure of the parser
    itself (`internal_error`, logged with its traceback): raised, it would fail the whole batch
    again at every redelivery, and no message behind it would ever be decided."""
    try:
        envelope = reader.read(raw.body)
    except BadInput as bad:
        return Prepared(raw, message_key(raw.body), None, None, bad.reason, bad.detail)
    except Exception as exc:
        return internal_error(raw, message_key(raw.body), None, "parsing", exc)
    try:
        event = parse_event(envelope)
    except BadInput as bad:
        return Prepared(raw, envelope.message_id, envelope.version, None, bad.reason, bad.detail)
    except Exception as exc:
        return internal_error(raw, envelope.message_id, envelope.version, "parsing", exc)
    if event.formed_at is not None and event.formed_at > raw.received_at + MAX_FORMED_AHEAD:
        event = msgspec.structs.replace(event, formed_at=None)  # as if it had none
    return Prepared(raw, envelope.message_id, envelope.version, event)


def internal_error(
    raw: RawMessage, key: str, version: Version | None, doing: str, exc: Exception
) -> Prepared:
    """The message as quarantined for a failure of the gateway's own (`doing` it)."""
    log.error("%s a message failed; quarantined as internal_error (a gateway bug: please "
              "report it)", doing, exc_info=exc, extra={"message_key": key})
    detail = f"{doing}: {type(exc).__name__}: {str(exc)[:160]}"
    return Prepared(raw, key, version, None, Reason.INTERNAL_ERROR, detail)


class BatchKeys(msgspec.Struct):
    """What the store must load for a batch to be decided."""

    message_keys: set[str]
    event_refs: set[str]
    legacy_case_ids: set[str]
    case_numbers: set[str]
    cprs: set[str]


def batch_keys(batch: Sequence[Prepared]) -> BatchKeys:
    keys = BatchKeys(set(), set(), set(), set(), set())
    for item in batch:
        keys.message_keys.add(item.key)
        event = item.event
        if event is None:
            continue
        if event.event_ref is not None:
            keys.event_refs.add(event.event_ref)
        if event.legacy_case_id is not None:
            keys.legacy_case_ids.add(event.legacy_case_id)
        if event.case_number is not None:
            keys.case_numbers.add(event.case_number)
        keys.cprs.add(event.cpr)
    return keys


def decide_batch(
    batch: Sequence[Prepared], state: CorrelationState, tolerance_s: int
) -> tuple[list[Result], Effects]:
    """Decide each message in order; the state sees the batch's own earlier messages."""
    effects = Effects()
    correlator = Correlator(state, effects, tolerance_s)
    results = []
    for item in batch:
        results.append(_decide(item, state, correlator))
        state.messages.add(item.key)
    return results, effects


_DUPLICATE, _QUARANTINED = Outcome.DUPLICATE, Outcome.QUARANTINED  # read once, not per message
_REDELIVERY = DuplicateKind.REDELIVERY


def _decide(item: Prepared, state: CorrelationState, correlator: Correlator) -> Result:
    if item.key in state.messages:
        return Result(item.key, item.version, _DUPLICATE, duplicate_kind=_REDELIVERY)
    if item.event is None:
        return Result(item.key, item.version, _QUARANTINED, reason=item.reason,
                      detail=item.detail)
    decision = correlator.accept(item.event, item.raw.received_at)
    return Result(
        item.key,
        item.version,
        decision.outcome,
        event_id=decision.event_id,
        duplicate_kind=decision.duplicate_kind,
        match=decision.match,
        conflict=decision.conflict,
        lag_seconds=decision.lag_seconds,
        first_version=decision.first_version,
        linked=decision.link is not None,
    )
