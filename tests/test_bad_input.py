"""Every kind of bad input gets its reason, no event and no exception."""

from __future__ import annotations

import base64
import datetime as dt

import pytest

from gateway.correlate import CorrelationState
from gateway.decide import decide_batch, prepare
from gateway.envelope import EnvelopeReader
from gateway.model import Outcome, Reason, Version
from gateway.simulate import BAD_INPUT, Simulator, simulate
from tests import helpers as h

READER = EnvelopeReader()


def reason_of(body: bytes) -> Reason | None:
    item = prepare(h.raw(body), READER)
    results, effects = decide_batch([item], CorrelationState(), 120)
    assert not effects.output or results[0].outcome is not Outcome.QUARANTINED
    return results[0].reason


def test_the_simulator_makes_every_kind_of_bad_input() -> None:
    assert set(BAD_INPUT) == set(Reason)


@pytest.mark.parametrize("reason", list(Reason), ids=lambda r: r.value)
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
