"""SF0741 3.0 (beskedtype AES_SagshaendelserFraAES 2.0): the XML payload.

Layout data first (namespace, element paths, code tables), then the parser. Unknown extra
elements are ignored; a missing required element or an unknown code is bad input.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Final, NamedTuple

from lxml import etree

from gateway.formats.v22 import certificate_for
from gateway.model import BadInput, Certificate, ParsedEvent, Reason, Version
from gateway.normalize import (
    normalize_cpr,
    normalize_legacy_case_id,
    normalize_municipality,
    parse_xs_date,
    parse_xs_datetime,
    to_utc,
)
from gateway.xmlsafe import Path, Paths, Texts

# --- layout data ------------------------------------------------------------------------------

BESKEDTYPE_UUID: Final = "ed47b5da-83d3-426f-9259-ee3d3cd0a9cb"
NAMESPACE: Final = "urn:dk:aes:sagshaendelse:2.0"
ROOT: Final = f"{{{NAMESPACE}}}Sagshaendelse"
DEFAULT_CHARSET: Final = "UTF-8"


def _path(*names: str) -> Path:
    return tuple(f"{{{NAMESPACE}}}{name}" for name in names)


SAGSNUMMER: Final = _path("Sag", "Sagsnummer")
TIDLIGERE_SAGSID: Final = _path("Sag", "TidligereSagsId")
SAGSTYPE: Final = _path("Sag", "Sagstype")
SKADESDATO: Final = _path("Sag", "Skadesdato")
CPR: Final = _path("Skadelidte", "CPR")
BOPAELSKOMMUNE: Final = _path("Skadelidte", "Bopaelskommune")
HAENDELSE_ID: Final = _path("Haendelse", "HaendelseId")
KATEGORI: Final = _path("Haendelse", "Kategori")
TYPE: Final = _path("Haendelse", "Type")
TIDSPUNKT: Final = _path("Haendelse", "Tidspunkt")
AFGOERELSESDATO: Final = _path("Haendelse", "Afgoerelsesdato")
TEKST: Final = _path("Haendelse", "Tekst")
ATTEST: Final = _path("Attest")
ATTESTTYPE: Final = _path("Attest", "Attesttype")
SPECIALE: Final = _path("Attest", "Speciale")
ANMODNINGSDATO: Final = _path("Attest", "Anmodningsdato")
MODTAGELSESDATO: Final = _path("Attest", "Modtagelsesdato")
PATHS: Final = Paths([
    SAGSNUMMER, TIDLIGERE_SAGSID, SAGSTYPE, SKADESDATO, CPR, BOPAELSKOMMUNE, HAENDELSE_ID,
    KATEGORI, TYPE, TIDSPUNKT, AFGOERELSESDATO, TEKST, ATTEST, ATTESTTYPE, SPECIALE,
    ANMODNINGSDATO, MODTAGELSESDATO,
])

SAGSNUMMER_PATTERN: Final = re.compile(r"AES-\d{4}-\d{7}")
CANONICAL_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CASE_KINDS: Final = frozenset({"ARBEJDSULYKKE", "ERHVERVSSYGDOM"})

CATEGORIES: Final[dict[str, str]] = {
    "AENDRING": "case_change",
    "GENBEHANDLING": "reprocessing",
    "ATTEST": "medical_certificate",
}


class EventType(NamedTuple):
    kategori: str
    event_type: str


TYPES: Final[dict[str, EventType]] = {
    "SAG_ANMELDT": EventType("AENDRING", "reported"),
    "SAG_AFVIST": EventType("AENDRING", "rejected"),
    "SAG_ANERKENDT": EventType("AENDRING", "recognised"),
    "SAG_HENLAGT": EventType("AENDRING", "shelved"),
    "SAG_NEDLAGT": EventType("AENDRING", "cancelled"),
    "GENBEHANDLING_START": EventType("GENBEHANDLING", "reprocessing_started"),
    "GENBEHANDLING_SLUT": EventType("GENBEHANDLING", "reprocessing_closed"),
    "FUNKTIONSATTEST_ANMODET": EventType("ATTEST", "functional_certificate_requested"),
    "FUNKTIONSATTEST_MODTAGET": EventType("ATTEST", "functional_certificate_received"),
    "SPECIALLAEGEATTEST_ANMODET": EventType("ATTEST", "specialist_certificate_requested"),
    "SPECIALLAEGEATTEST_MODTAGET": EventType("ATTEST", "specialist_certificate_received"),
}

ATTEST_KINDS: Final[dict[str, str]] = {
    "FUNKTIONSATTEST": "functional",
    "SPECIALLAEGEATTEST": "specialist",
}

# --- parser -----------------------------------------------------------------------------------


def _required(found: Texts, path: Path) -> str:
    value = found.get(path)
    if value is None:
        name = path[-1].rsplit("}", 1)[-1]
        raise BadInput(Reason.MISSING_ELEMENT, f"required element {name} is missing or empty")
    return value


def _date(found: Texts, path: Path) -> dt.date | None:
    value = found.get(path)
    return None if value is None else parse_xs_date(value)


def _event_type(found: Texts) -> tuple[str, str]:
    type_code = _required(found, TYPE)
    kategori = _required(found, KATEGORI)
    known = TYPES.get(type_code)
    if known is None:
        raise BadInput(Reason.UNKNOWN_TYPE, f"Type {type_code[:40]!r} unknown")
    if kategori != known.kategori:
        raise BadInput(
            Reason.CATEGORY_MISMATCH, f"Kategori {kategori[:40]!r} does not fit Type {type_code!r}"
        )
    return known.event_type, CATEGORIES[kategori]


def _certificate(found: Texts, event_type: str) -> Certificate | None:
    derived = certificate_for(event_type)
    if ATTEST not in found:
        return derived
    if derived is None:
        raise BadInput(Reason.CATEGORY_MISMATCH, "Attest given for a non-ATTEST event")
    kind = ATTEST_KINDS.get(_required(found, ATTESTTYPE))
    if kind != derived.kind:
        raise BadInput(Reason.CATEGORY_MISMATCH, "Attesttype does not fit the event Type")
    return Certificate(
        kind=kind,
        specialty=found.get(SPECIALE),
        requested_on=_date(found, ANMODNINGSDATO),
        received_on=_date(found, MODTAGELSESDATO),
    )


def _case_number(found: Texts) -> str:
    value = _required(found, SAGSNUMMER)
    if not SAGSNUMMER_PATTERN.fullmatch(value):
        raise BadInput(Reason.INVALID_CASE_ID, f"Sagsnummer {value[:40]!r} is not AES-YYYY-NNNNNNN")
    return value


def _event_ref(found: Texts) -> str:
    value = _required(found, HAENDELSE_ID)
    if CANONICAL_UUID.fullmatch(value):  # already as str(uuid.UUID(value)) writes it
        return value
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise BadInput(Reason.INVALID_VALUE, f"HaendelseId {value[:40]!r} is not a UUID") from None


def _case_kind(found: Texts) -> str | None:
    value = found.get(SAGSTYPE)
    if value is not None and value not in CASE_KINDS:
        raise BadInput(Reason.INVALID_VALUE, f"Sagstype {value[:40]!r} unknown")
    return value


def parse_element(root: etree._Element, message_id: str) -> ParsedEvent:
    """A parsed `Sagshaendelse` 2.0 element to a ParsedEvent, or BadInput with the reason."""
    if root.tag != ROOT:
        raise BadInput(Reason.WRONG_PAYLOAD_FORM, f"payload root {root.tag!r} is not {ROOT!r}")
    found = PATHS.texts(root)
    event_type, category = _event_type(found)
    occurred_at, occurred_alt = to_utc(parse_xs_datetime(_required(found, TIDSPUNKT)))
    legacy = found.get(TIDLIGERE_SAGSID)
    return ParsedEvent(
        version=Version.V3_0,
        message_id=message_id,
        formed_at=None,
        event_type=event_type,
        category=category,
        occurred_at=occurred_at,
        occurred_alt=occurred_alt,
        legacy_case_id=normalize_legacy_case_id(legacy) if legacy else None,
        case_number=_case_number(found),
        case_kind=_case_kind(found),
        injury_date=_date(found, SKADESDATO),
        decision_date=_date(found, AFGOERELSESDATO),
        cpr=normalize_cpr(_required(found, CPR)),
        municipality_code=normalize_municipality(_required(found, BOPAELSKOMMUNE)),
        description=found.get(TEKST),
        certificate=_certificate(found, event_type),
        event_ref=_event_ref(found),
    )
