"""Invariants over generated input (hypothesis)."""

from __future__ import annotations

import datetime as dt
import uuid

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway import canonical
from gateway.correlate import CorrelationState
from gateway.decide import decide_batch, prepare
from gateway.envelope import EnvelopeReader
from gateway.model import Outcome, Reason, Version
from tests import helpers as h

READER = EnvelopeReader()
VALID = [
    h.v22_inline(h.record()),
    h.v22_base64(h.record()),
    h.v30_inline(h.v30_xml()),
    h.v30_base64(h.v30_xml()),
]


def _decided(body: bytes) -> Outcome:
    item = prepare(h.raw(body), READER)
    results, _ = decide_batch([item], CorrelationState(), 120)
    (result,) = results
    assert (result.outcome is Outcome.QUARANTINED) == (result.reason is not None)
    # `prepare` quarantines a parser's exception as internal_error, so that live traffic goes
    # on; here it is what it is, an exception
    assert result.reason is not Reason.INTERNAL_ERROR, result.detail
    return result.outcome


@given(st.binary(max_size=4096))
def test_any_bytes_give_an_outcome(body: bytes) -> None:
    assert _decided(body) in (Outcome.EMITTED, Outcome.QUARANTINED)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 10_000), st.binary(min_size=0, max_size=3)), max_size=8),
)
def test_mutated_messages_give_an_outcome(body: bytes, edits: list[tuple[int, bytes]]) -> None:
    data = bytearray(body)
    for position, replacement in edits:
        at = position % (len(data) + 1)
        data[at : at + len(replacement)] = replacement
    assert _decided(bytes(data)) in (Outcome.EMITTED, Outcome.QUARANTINED)


@given(st.text(max_size=200))
def test_any_record_text_gives_an_outcome(text: str) -> None:
    body = h.v22_base64(text, charset="UTF-8")
    assert _decided(body) in (Outcome.EMITTED, Outcome.QUARANTINED)


events = st.builds(
    h.event,
    version=st.sampled_from(list(Version)),
    event_type=st.sampled_from(["reported", "rejected"]),
    at=st.integers(0, 600).map(
        lambda s: dt.datetime(2022, 3, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=s)),
    legacy=st.sampled_from([None, "1", "2"]),
    number=st.sampled_from([None, "AES-2022-0000001", "AES-2022-0000002"]),
    cpr=st.sampled_from(["1401851234", "0101001234"]),
)


@given(st.lists(events, max_size=12))
def test_every_message_gets_exactly_one_outcome_and_replay_adds_nothing(batch: list) -> None:  # type: ignore[type-arg]
    from gateway.decide import Prepared

    items = [Prepared(h.raw(b""), e.message_id, e.version, e) for e in batch]
    state = CorrelationState()
    results, effects = decide_batch(items, state, 120)
    emitted = sum(r.outcome is Outcome.EMITTED for r in results)
    assert emitted + sum(r.outcome is Outcome.DUPLICATE for r in results) == len(items)
    assert len(effects.output) == emitted + sum(r.linked for r in results)
    again, effects_again = decide_batch(items, state, 120)
    assert all(r.outcome is Outcome.DUPLICATE for r in again)
    assert effects_again.output == []


def test_reason_values_are_stable_metric_labels() -> None:
    assert all(r.value == r.value.lower() and " " not in r.value for r in Reason)


@given(st.text())
def test_event_ids_are_exactly_uuid5_of_the_identity(identity: str) -> None:
    # event ids are stored downstream: the fast path must never give another id
    assert canonical.event_id(identity) == str(uuid.uuid5(canonical.EVENT_ID_NAMESPACE, identity))


OFFSETS = st.one_of(st.none(), st.integers(-14 * 60, 14 * 60).map(
    lambda minutes: dt.timezone(dt.timedelta(minutes=minutes))))


@given(st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59)),
       OFFSETS)
@example(dt.datetime(9999, 12, 31, 23, 0), dt.timezone(-dt.timedelta(hours=14)))
@example(dt.datetime(1, 1, 1, 0, 30), dt.timezone(dt.timedelta(hours=14)))
@example(dt.datetime(1, 1, 1, 0, 30), None)
def test_any_time_in_either_version_is_an_event_or_invalid_time(
    when: dt.datetime, offset: dt.tzinfo | None
) -> None:
    """From year 1 to 9999, with any offset or none: until stop 18 the times whose UTC falls
    outside those years raised OverflowError."""
    text = when.replace(tzinfo=offset, microsecond=0).isoformat()
    compact = when.strftime("%Y%m%d%H%M").rjust(12, "0")
    for body in (h.v30_inline(h.v30_xml(when=text)), h.v22_inline(h.record(when=compact))):
        item = prepare(h.raw(body), READER)
        assert item.reason in (None, Reason.INVALID_TIME), item.detail
