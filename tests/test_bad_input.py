"""Every kind of bad input gets its reason, no event and no exception."""

from __future__ import annotations

import base64
import datetime as dt
import zlib

import pytest

from gateway.correlate import CorrelationState
from gateway.decide import decide_batch, prepare
from gateway.envelope import EnvelopeReader
from gateway.model import Envelope, Outcome, Reason, Version
from gateway.simulate import Simulator, simulate
from gateway.simulate_wire import BAD_INPUT
from tests import helpers as h

READER = EnvelopeReader()


def reason_of(body: bytes) -> Reason | None:
    item = prepare(h.raw(body), READER)
    results, effects = decide_batch([item], CorrelationState(), 120)
    assert not effects.output or results[0].outcome is not Outcome.QUARANTINED
    return results[0].reason


KINDS_OF_BAD_INPUT = [reason for reason in Reason if reason is not Reason.INTERNAL_ERROR]


def test_the_simulator_makes_every_kind_of_bad_input() -> None:
    assert set(BAD_INPUT) == set(KINDS_OF_BAD_INPUT)


@pytest.mark.parametrize("reason", KINDS_OF_BAD_INPUT, ids=lambda r: r.value)
def test_simulated_bad_input_is_quarantined_with_its_reason(reason: Reason) -> None:
    sim: Simulator = simulate(cases=20, seed=3, bad_share=0)
    base = next(e for e in sim.events if e.case.legacy_id and e.case.number)
    body = BAD_INPUT[reason](sim, base, "5f0c6b6e-7a0e-4f5b-9a43-2f4c0b8a9d10",
                             dt.datetime(2022, 3, 1, tzinfo=dt.UTC))
    assert reason_of(body) is reason


CONTROL = h.record()[:80] + "\x01\x02" + h.record()[82:]
DEEP = "<a>" * 300 + "</a>" * 300
EXTERNAL = (
    '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    "<r>&x;</r>"
)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"", Reason.NOT_XML, id="empty"),
        pytest.param(b"\xff\xfe\x00garbage", Reason.NOT_XML, id="binary"),
        pytest.param(EXTERNAL.encode(), Reason.FORBIDDEN_DTD, id="external-entity"),
        pytest.param(DEEP.encode(), Reason.NOT_XML, id="deep-nesting"),
        pytest.param(h.v22_inline(h.record()[:42]), Reason.BAD_RECORD, id="record-too-short"),
        pytest.param(h.v22_inline(h.record() + "X"), Reason.BAD_RECORD, id="record-too-long"),
        pytest.param(h.v22_base64(CONTROL), Reason.BAD_RECORD, id="record-control-chars"),
        pytest.param(h.v22_inline("AESH02" + h.record()[6:]), Reason.BAD_RECORD,
                     id="unknown-layoutversion"),
        pytest.param(h.v22_inline(h.record(sagsid="00012A4567")), Reason.INVALID_CASE_ID,
                     id="sagsid-not-digits"),
        pytest.param(h.v22_inline(h.record(when="202203011075")), Reason.INVALID_TIME,
                     id="minute-75"),
        pytest.param(h.v22_inline(h.record(cpr="1401851234"), envelope_cpr="0101001234"),
                     Reason.ENVELOPE_PAYLOAD_MISMATCH, id="2.2-envelope-cpr"),
        pytest.param(h.v30_inline(h.v30_xml(cpr="")), Reason.MISSING_ELEMENT, id="no-cpr"),
        pytest.param(h.v30_inline(h.v30_xml(when="1. marts 2022")), Reason.INVALID_TIME,
                     id="bad-tidspunkt"),
        # in UTC these are in year 10000 and year 0: until stop 18 an OverflowError, which
        # ended a replay with a traceback and failed a live batch at every redelivery
        pytest.param(h.v30_inline(h.v30_xml(when="9999-12-31T23:00:00-14:00")),
                     Reason.INVALID_TIME, id="tidspunkt-after-year-9999-in-utc"),
        pytest.param(h.v30_inline(h.v30_xml(when="0001-01-01T00:30:00+14:00")),
                     Reason.INVALID_TIME, id="tidspunkt-before-year-1-in-utc"),
        pytest.param(h.v30_inline(h.v30_xml(when="0001-01-01T00:30:00")),
                     Reason.INVALID_TIME, id="danish-tidspunkt-before-year-1-in-utc"),
        pytest.param(h.v22_inline(h.record(when="000101010030")), Reason.INVALID_TIME,
                     id="2.2-time-before-year-1-in-utc"),
        pytest.param(h.v30_inline(h.v30_xml(kommune="1101")), Reason.INVALID_MUNICIPALITY,
                     id="4-digit-kommune"),
        pytest.param(h.v30_inline(h.v30_xml(legacy="12X")), Reason.INVALID_CASE_ID,
                     id="bad-tidligere-sagsid"),
        pytest.param(h.v30_inline(h.v30_xml(extra="<Attest><Attesttype>FUNKTIONSATTEST"
                                                  "</Attesttype></Attest>")),
                     Reason.CATEGORY_MISMATCH, id="attest-on-non-attest-event"),
        pytest.param(h.v30_inline(h.v30_xml(
            type_code="FUNKTIONSATTEST_ANMODET", kategori="ATTEST",
            extra="<Attest><Attesttype>SPECIALLAEGEATTEST</Attesttype></Attest>")),
            Reason.CATEGORY_MISMATCH, id="attesttype-mismatch"),
        pytest.param(h.v30_inline(h.v30_xml().replace(
            "</Sagsnummer>", "</Sagsnummer><Sagstype>UKENDT</Sagstype>")),
            Reason.INVALID_VALUE, id="unknown-sagstype"),
        pytest.param(h.envelope(
            '<Base64 xmlns="urn:besked:kuvert:1.0" encoding="UTF-8">'
            + base64.b64encode(b"<Sagshaendelse \xff\xfe/>").decode() + "</Base64>",
            Version.V3_0), Reason.BAD_ENCODING, id="invalid-utf8"),
        pytest.param(h.envelope("<Andet xmlns='urn:x'/>", Version.V3_0),
                     Reason.WRONG_PAYLOAD_FORM, id="3.0-foreign-payload"),
        pytest.param(h.envelope("", Version.V3_0), Reason.MISSING_ENVELOPE_FIELD,
                     id="empty-beskeddata"),
    ],
)
def test_handcrafted_bad_input(body: bytes, reason: Reason) -> None:
    assert reason_of(body) is reason


LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
    + "".join(f'<!ENTITY {n} "{("&" + p + ";") * 10}">' for p, n in zip("abcdefgh", "bcdefghi",
                                                                       strict=True))
    + ']><Sagshaendelse xmlns="urn:dk:aes:sagshaendelse:2.0">&i;</Sagshaendelse>'
)
NOTE = "<Tekst>Skade på hånd</Tekst></Haendelse>"


def wrapped(data: bytes, charset: str, version: Version = Version.V3_0) -> bytes:
    """A payload in the Base64 form with the given `encoding` label."""
    content_type = "application/xml" if version is Version.V3_0 else "text/plain"
    return h.envelope(
        f'<Base64 xmlns="urn:besked:kuvert:1.0" content-type="{content_type}" '
        f'encoding="{charset}">{base64.b64encode(data).decode()}</Base64>', version)


def declared(body: bytes, charset: str) -> bytes:
    return body.replace(b'encoding="UTF-8"', f'encoding="{charset}"'.encode(), 1)


HUGE = "a" * 300_000


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(LAUGHS.encode(), Reason.FORBIDDEN_DTD, id="billion-laughs"),
        # base64 cannot grow (3 bytes from 4): a small payload "decodes to something huge"
        # only by expanding entities, which the payload parse refuses like the envelope's
        pytest.param(wrapped(LAUGHS.encode(), "UTF-8"), Reason.FORBIDDEN_DTD,
                     id="billion-laughs-in-base64"),
        pytest.param(h.v30_inline(h.v30_xml().replace("</Haendelse>",
                                                      f"<Tekst>{HUGE}</Tekst></Haendelse>")),
                     Reason.TOO_LARGE, id="huge-text"),
        pytest.param(h.v30_inline(h.v30_xml().replace("<Haendelse>",
                                                      f'<Haendelse note="{HUGE}">')),
                     Reason.TOO_LARGE, id="huge-attribute"),
        pytest.param(h.v30_inline(h.v30_xml().replace(
            "<Haendelse>", "<Haendelse " + " ".join(f'a{i}="x"' for i in range(40_000)) + ">")),
            Reason.TOO_LARGE, id="huge-attribute-list"),
        pytest.param(h.v30_base64(h.v30_xml().replace("</Haendelse>",
                                                      f"<Tekst>{HUGE}</Tekst></Haendelse>")),
                     Reason.TOO_LARGE, id="huge-base64"),
        # ... or by a compressing "charset": Python knows zlib as a codec, never for text
        pytest.param(wrapped(zlib.compress(b"<a>" + b"a" * 50_000_000 + b"</a>"), "zlib"),
                     Reason.BAD_ENCODING, id="zlib-bomb-as-charset"),
        pytest.param(wrapped(zlib.compress(b" " * 50_000_000), "zlib_codec", Version.V2_2),
                     Reason.BAD_ENCODING, id="zlib-bomb-as-2.2-charset"),
        pytest.param(declared(h.v30_inline(h.v30_xml()), "x-nonsense"), Reason.BAD_ENCODING,
                     id="charset-unknown"),
        pytest.param(declared(h.v30_inline(h.v30_xml()), "UTF-16"), Reason.BAD_ENCODING,
                     id="charset-utf16-on-8-bit"),
        pytest.param(declared(h.v30_inline(h.v30_xml().replace("</Haendelse>", NOTE)),
                              "ISO-8859-1"), Reason.BAD_ENCODING, id="charset-latin1-on-utf8"),
        pytest.param(wrapped(('<?xml version="1.0" encoding="ISO-8859-1"?>'
                              + h.v30_xml()).encode("latin-1"), "UTF-8"),
                     Reason.BAD_ENCODING, id="charset-payload-and-wrapper-differ"),
        pytest.param(wrapped(h.v30_xml().replace("</Haendelse>", NOTE).encode(), "ISO-8859-1"),
                     Reason.BAD_ENCODING, id="charset-wrapper-latin1-on-utf8"),
        pytest.param(wrapped(h.record(text="Skade på hånd").encode(), "ISO-8859-1",
                             Version.V2_2), Reason.BAD_ENCODING, id="charset-2.2-latin1-on-utf8"),
        pytest.param(wrapped(h.record(text="Skade på hånd").encode("latin-1"), "UTF-8",
                             Version.V2_2), Reason.BAD_ENCODING, id="charset-2.2-utf8-on-latin1"),
    ],
)
def test_hostile_input_is_refused_with_its_reason(body: bytes, reason: Reason) -> None:
    assert len(body) <= 1024 * 1024, "within the message size limit: refused for what it is"
    assert reason_of(body) is reason


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(wrapped(h.v30_xml().replace("</Haendelse>", NOTE).encode("latin-1"),
                             "ISO-8859-1"), id="latin1-labelled-latin1"),
        pytest.param(wrapped(('<?xml version="1.0" encoding="ISO-8859-1"?>' + h.v30_xml()
                              .replace("</Haendelse>", NOTE)).encode("latin-1"), "ISO-8859-1"),
                     id="latin1-declared-twice"),
        pytest.param(h.v30_inline(h.v30_xml().replace("</Haendelse>", NOTE)).decode()
                     .replace('encoding="UTF-8"', 'encoding="UTF-16"', 1).encode("utf-16"),
                     id="real-utf16"),
        pytest.param(wrapped(h.record(text="Skade på hånd").encode("latin-1"), "ISO-8859-1",
                             Version.V2_2), id="2.2-latin1"),
    ],
)
def test_honest_charsets_are_accepted(body: bytes) -> None:
    item = prepare(h.raw(body), READER)
    assert item.reason is None, item.detail
    assert item.event is not None
    assert item.event.description is not None
    assert "på hånd" in item.event.description


def test_size_limit_is_configurable() -> None:
    body = h.v30_inline(h.v30_xml())
    reader = EnvelopeReader(max_bytes=len(body) - 1)
    assert prepare(h.raw(body), reader).reason is Reason.TOO_LARGE


def test_quarantine_detail_never_carries_the_cpr() -> None:
    body = h.v22_inline(h.record(cpr="1401851234"), envelope_cpr="1401851235")
    item = prepare(h.raw(body), READER)
    assert item.detail is not None
    assert "1401851234" not in item.detail
    assert "1401851235" not in item.detail


@pytest.mark.parametrize(("read_at", "kept"), [("08:30", True), ("08:00", False)])
def test_a_dannelsestidspunkt_over_an_hour_after_reading_is_read_as_missing(
    read_at: str, kept: bool
) -> None:
    """The helpers' envelope is formed at 10:17:03 Danish time (09:17:03 UTC). Read at 08:00
    UTC it claims to be formed 77 minutes after it was read: a wrong clock, not a time."""
    hour, minute = map(int, read_at.split(":"))
    at = dt.datetime(2022, 3, 1, hour, minute, tzinfo=dt.UTC)
    item = prepare(h.raw(h.v30_inline(h.v30_xml()), at), READER)
    assert item.event is not None
    formed = dt.datetime(2022, 3, 1, 9, 17, 3, tzinfo=dt.UTC)
    assert item.event.formed_at == (formed if kept else None)


def test_the_last_day_of_year_9999_is_still_a_time() -> None:
    item = prepare(h.raw(h.v22_inline(h.record(when="999912311200"))), READER)
    assert item.reason is None
    assert item.event is not None
    assert item.event.occurred_at == dt.datetime(9999, 12, 31, 11, 0, tzinfo=dt.UTC)


def test_a_formed_time_out_of_range_is_read_as_missing() -> None:
    body = h.v30_inline(h.v30_xml()).replace(
        b"2022-03-01T10:17:03</", b"9999-12-31T23:00:00-14:00</")
    assert b"9999-12-31T23:00:00-14:00" in body
    item = prepare(h.raw(body), READER)
    assert item.reason is None
    assert item.event is not None
    assert item.event.formed_at is None


class BrokenReader(EnvelopeReader):
    """A parser with a bug: it fails on one message where it should give a reason."""

    def read(self, body: bytes) -> Envelope:
        if b"BREAK" in body:
            raise ZeroDivisionError("a bug")
        return super().read(body)


def test_a_failing_parser_quarantines_the_message_and_decides_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A parser bug on one message must not fail its batch: raised, it failed the batch again
    at every redelivery, and none of the messages behind it was ever decided."""
    reader = BrokenReader()
    bodies = [h.v22_inline(h.record()), b"<BREAK/>", h.v30_inline(h.v30_xml())]
    batch = [prepare(h.raw(body), reader) for body in bodies]
    results, _ = decide_batch(batch, CorrelationState(), 120)
    assert [r.outcome for r in results] == [Outcome.EMITTED, Outcome.QUARANTINED,
                                            Outcome.DUPLICATE]
    assert results[1].reason is Reason.INTERNAL_ERROR
    assert results[1].detail == "parsing: ZeroDivisionError: a bug"
    assert "a gateway bug" in caplog.text
