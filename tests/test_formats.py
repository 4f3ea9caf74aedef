"""Spec parts 3 and 4: every row of both code tables, both Beskeddata forms, the push body."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from gateway.decide import prepare
from gateway.envelope import EnvelopeReader
from gateway.model import Certificate, Version
from tests import helpers as h

FIXTURES = Path(__file__).parent / "fixtures"
READER = EnvelopeReader()

# The spec's tables, written out here rather than read from the code under test.
V22_CODES = [
    ("01", "reported", "case_change"),
    ("02", "rejected", "case_change"),
    ("03", "recognised", "case_change"),
    ("04", "shelved", "case_change"),
    ("05", "cancelled", "case_change"),
    ("11", "reprocessing_started", "reprocessing"),
    ("12", "reprocessing_closed", "reprocessing"),
    ("21", "functional_certificate_requested", "medical_certificate"),
    ("22", "functional_certificate_received", "medical_certificate"),
    ("23", "specialist_certificate_requested", "medical_certificate"),
    ("24", "specialist_certificate_received", "medical_certificate"),
]
V30_TYPES = [
    ("SAG_ANMELDT", "AENDRING", "reported", "case_change"),
    ("SAG_AFVIST", "AENDRING", "rejected", "case_change"),
    ("SAG_ANERKENDT", "AENDRING", "recognised", "case_change"),
    ("SAG_HENLAGT", "AENDRING", "shelved", "case_change"),
    ("SAG_NEDLAGT", "AENDRING", "cancelled", "case_change"),
    ("GENBEHANDLING_START", "GENBEHANDLING", "reprocessing_started", "reprocessing"),
    ("GENBEHANDLING_SLUT", "GENBEHANDLING", "reprocessing_closed", "reprocessing"),
    ("FUNKTIONSATTEST_ANMODET", "ATTEST", "functional_certificate_requested",
     "medical_certificate"),
    ("FUNKTIONSATTEST_MODTAGET", "ATTEST", "functional_certificate_received",
     "medical_certificate"),
    ("SPECIALLAEGEATTEST_ANMODET", "ATTEST", "specialist_certificate_requested",
     "medical_certificate"),
    ("SPECIALLAEGEATTEST_MODTAGET", "ATTEST", "specialist_certificate_received",
     "medical_certificate"),
]


def parsed(body: bytes):  # type: ignore[no-untyped-def]
    item = prepare(h.raw(body), READER)
    assert item.reason is None, item.detail
    assert item.event is not None
    return item.event


@pytest.mark.parametrize(("code", "event_type", "category"), V22_CODES)
def test_v22_code_table(code: str, event_type: str, category: str) -> None:
    event = parsed(h.v22_inline(h.record(code=code, text="")))
    assert (event.event_type, event.category) == (event_type, category)
    assert event.description  # blank text: the code's meaning as AES words it


@pytest.mark.parametrize(("type_code", "kategori", "event_type", "category"), V30_TYPES)
def test_v30_type_table(type_code: str, kategori: str, event_type: str, category: str) -> None:
    event = parsed(h.v30_inline(h.v30_xml(type_code=type_code, kategori=kategori)))
    assert (event.event_type, event.category) == (event_type, category)


def test_v22_record_fields() -> None:
    event = parsed(h.v22_inline(h.record()))
    assert event.version is Version.V2_2
    assert event.legacy_case_id == "1234567"
    assert event.cpr == "1401851234"
    assert event.municipality_code == "101"
    assert event.occurred_at == dt.datetime(2022, 3, 1, 9, 15, tzinfo=dt.UTC)
    assert event.injury_date == dt.date(2022, 1, 14)
    assert event.decision_date == dt.date(2022, 2, 28)
    assert event.description == "Anmeldt skade/sygdom er afvist"


def test_v22_short_record_leaves_later_fields_blank() -> None:
    rec = h.record()[:43]  # up to Haendelsestidspunkt, trailing spaces stripped in transport
    event = parsed(h.v22_inline(rec + "\r\n"))
    assert event.injury_date is None
    assert event.decision_date is None
    assert event.description == "Anmeldt skade/sygdom er afvist"  # the code's meaning


def test_v22_characters_not_bytes() -> None:
    rec = h.record(text="Skade på højre hånd ÆØÅ")
    latin1 = parsed(h.v22_base64(rec, charset="ISO-8859-1"))
    utf8 = parsed(h.v22_base64(rec, charset="UTF-8"))
    assert latin1.description == utf8.description == "Skade på højre hånd ÆØÅ"


def test_v22_unknown_kommune_is_null() -> None:
    assert parsed(h.v22_inline(h.record(kommune="000"))).municipality_code is None


def test_v30_fields_and_unknown_elements_ignored() -> None:
    xml = h.v30_xml(extra="<Fremtid><Noget>x</Noget></Fremtid>")
    event = parsed(h.v30_inline(xml))
    assert event.version is Version.V3_0
    assert event.case_number == "AES-2022-0004711"
    assert event.legacy_case_id == "1234567"
    assert event.cpr == "1401851234"
    assert event.municipality_code == "101"
    assert event.occurred_at == dt.datetime(2022, 3, 1, 9, 15, 42, tzinfo=dt.UTC)
    assert event.event_ref == "0b4b2f8e-3c1e-4c55-9d5e-6a0f3f1c2b7a"


def test_v30_certificate_details() -> None:
    xml = h.v30_xml(
        type_code="SPECIALLAEGEATTEST_MODTAGET", kategori="ATTEST",
        extra="<Attest><Attesttype>SPECIALLAEGEATTEST</Attesttype><Speciale>Ortopædkirurgi"
              "</Speciale><Anmodningsdato>2022-03-01</Anmodningsdato><Modtagelsesdato>"
              "2022-03-20</Modtagelsesdato></Attest>",
    )
    assert parsed(h.v30_inline(xml)).certificate == Certificate(
        kind="specialist", specialty="Ortopædkirurgi",
        requested_on=dt.date(2022, 3, 1), received_on=dt.date(2022, 3, 20),
    )


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(h.v22_inline(h.record()), id="2.2-inline"),
        pytest.param(h.v22_base64(h.record()), id="2.2-base64"),
    ],
)
def test_v22_both_forms(body: bytes) -> None:
    assert parsed(body).legacy_case_id == "1234567"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(h.v30_inline(h.v30_xml()), id="3.0-inline"),
        pytest.param(h.v30_base64(h.v30_xml()), id="3.0-base64"),
    ],
)
def test_v30_both_forms(body: bytes) -> None:
    assert parsed(body).case_number == "AES-2022-0004711"


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.xml")))
def test_sample_fixtures_describe_the_same_event(name: str) -> None:
    event = parsed((FIXTURES / name).read_bytes())
    assert event.event_type == "rejected"
    assert event.legacy_case_id == "1234567"
    assert event.cpr == "1401851234"
    expected_version = Version.V2_2 if name.startswith("v22") else Version.V3_0
    assert event.version is expected_version


def test_push_body_is_read_like_the_envelope_it_wraps() -> None:
    body = (FIXTURES / "v30-push-body.xml").read_bytes()
    assert parsed(body).message_id == "7c1d9e44-2b8a-4f3e-8d6c-5a4b3c2d1e03"


def test_beskedtype_uuids_are_configuration() -> None:
    reader = EnvelopeReader({"11111111-2222-3333-4444-555555555555": Version.V3_0})
    body = h.v30_inline(h.v30_xml(), beskedtype="11111111-2222-3333-4444-555555555555")
    item = prepare(h.raw(body), reader)
    assert item.event is not None
    assert item.event.version is Version.V3_0
