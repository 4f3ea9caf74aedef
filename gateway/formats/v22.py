"""SF0741 2.2 (beskedtype AES_SagshaendelserFraAES 1.0): the fixed-format text record.

Everything layout-specific is data in the first half of this module, so loading KOMBIT's
official layout is a change of these tables, not of the parser below.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

from gateway.model import BadInput, Certificate, ParsedEvent, Reason, Version
from gateway.normalize import (
    local_to_utc,
    normalize_cpr,
    normalize_legacy_case_id,
    normalize_municipality,
    parse_compact_date,
    parse_compact_local_time,
)

# --- layout data ------------------------------------------------------------------------------

BESKEDTYPE_UUID: Final = "93981c87-7736-45fd-8e12-0c7394331045"
INLINE_NAMESPACE: Final = "urn:dk:aes:sagshaendelse:1.0"
DEFAULT_CHARSET: Final = "ISO-8859-1"


class Field(NamedTuple):
    start: int  # 1-based, in characters
    length: int

    def cut(self, record: str) -> str:
        return record[self.start - 1 : self.start - 1 + self.length]


POSTTYPE: Final = Field(1, 4)
LAYOUTVERSION: Final = Field(5, 2)
SAGSID: Final = Field(7, 10)
CPR: Final = Field(17, 10)
BOPAELSKOMMUNE: Final = Field(27, 3)
HAENDELSESKODE: Final = Field(30, 2)
HAENDELSESTIDSPUNKT: Final = Field(32, 12)
SKADESDATO: Final = Field(44, 8)
AFGOERELSESDATO: Final = Field(52, 8)
HAENDELSESTEKST: Final = Field(60, 60)

POSTTYPE_VALUE: Final = "AESH"
LAYOUT_VERSIONS: Final = frozenset({"01"})
RECORD_LENGTH: Final = 119
MIN_RECORD_LENGTH: Final = 43  # up to and including Haendelsestidspunkt


class Code(NamedTuple):
    event_type: str
    category: str
    meaning: str  # as AES words it; the description when the record's text is blank


CODES: Final[dict[str, Code]] = {
    "01": Code("reported", "case_change",
               "Der er anmeldt en formodet arbejdsbetinget skade/sygdom"),
    "02": Code("rejected", "case_change", "Anmeldt skade/sygdom er afvist"),
    "03": Code("recognised", "case_change",
               "Anmeldt skade/sygdom er anerkendt, og erstatningsspørgsmålet er afgjort"),
    "04": Code("shelved", "case_change", "Anmeldt skade/sygdom er henlagt"),
    "05": Code("cancelled", "case_change",
               "Anmeldt skade/sygdom er fejlagtigt oprettet; sagen er nedlagt"),
    "11": Code("reprocessing_started", "reprocessing",
               "Sag er tidligere afsluttet og er nu under ny behandling"),
    "12": Code("reprocessing_closed", "reprocessing", "Den genbehandlede sag er nu afsluttet"),
    "21": Code("functional_certificate_requested", "medical_certificate",
               "Anmodning om Funktionsattest"),
    "22": Code("functional_certificate_received", "medical_certificate",
               "Modtagelse af Funktionsattest"),
    "23": Code("specialist_certificate_requested", "medical_certificate",
               "Anmodning om Speciallægeattest"),
    "24": Code("specialist_certificate_received", "medical_certificate",
               "Modtagelse af Speciallægeattest"),
}

# --- parser -----------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def certificate_for(event_type: str) -> Certificate | None:
    """Certificate events carry their kind even when the version has no details."""
    if event_type.startswith("functional_certificate"):
        return Certificate(kind="functional")
    if event_type.startswith("specialist_certificate"):
        return Certificate(kind="specialist")
    return None


def _record(text: str) -> str:
    record = text.strip(" \r\n")
    if len(record) < MIN_RECORD_LENGTH:
        raise BadInput(Reason.BAD_RECORD, f"record has {len(record)} characters, needs 43")
    if len(record) > RECORD_LENGTH:
        raise BadInput(Reason.BAD_RECORD, f"record has {len(record)} characters, at most 119")
    if _CONTROL.search(record):
        raise BadInput(Reason.BAD_RECORD, "record contains control characters")
    return record.ljust(RECORD_LENGTH)


def parse_record(text: str, message_id: str) -> ParsedEvent:
    """One fixed-format record to a ParsedEvent, or BadInput with the reason."""
    record = _record(text)
    if POSTTYPE.cut(record) != POSTTYPE_VALUE:
        raise BadInput(Reason.BAD_RECORD, f"Posttype {POSTTYPE.cut(record)!r} is not 'AESH'")
    if LAYOUTVERSION.cut(record) not in LAYOUT_VERSIONS:
        raise BadInput(Reason.BAD_RECORD, f"Layoutversion {LAYOUTVERSION.cut(record)!r} unknown")
    code = CODES.get(HAENDELSESKODE.cut(record))
    if code is None:
        raise BadInput(
            Reason.UNKNOWN_EVENT_CODE, f"Haendelseskode {HAENDELSESKODE.cut(record)!r} unknown"
        )
    occurred_at, occurred_alt = local_to_utc(
        parse_compact_local_time(HAENDELSESTIDSPUNKT.cut(record))
    )
    description = HAENDELSESTEKST.cut(record).rstrip()
    return ParsedEvent(
        version=Version.V2_2,
        message_id=message_id,
        formed_at=None,
        event_type=code.event_type,
        category=code.category,
        occurred_at=occurred_at,
        occurred_alt=occurred_alt,
        legacy_case_id=normalize_legacy_case_id(SAGSID.cut(record)),
        case_number=None,
        case_kind=None,
        injury_date=parse_compact_date(SKADESDATO.cut(record)),
        decision_date=parse_compact_date(AFGOERELSESDATO.cut(record)),
        cpr=normalize_cpr(CPR.cut(record)),
        municipality_code=normalize_municipality(BOPAELSKOMMUNE.cut(record)),
        description=description or code.meaning,
        certificate=certificate_for(code.event_type),
        event_ref=None,
    )
