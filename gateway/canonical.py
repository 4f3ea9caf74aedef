"""Building the canonical event (spec part 7) and its deterministic id."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from typing import TYPE_CHECKING, Final

import msgspec

from gateway.model import (
    CanonicalEvent,
    CaseRef,
    MatchMethod,
    ParsedEvent,
    Person,
    Provenance,
    Version,
)

if TYPE_CHECKING:
    from gateway.correlate import Link

# Fixed forever: changing it changes every event id downstream systems have stored.
EVENT_ID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:aes-gateway:case-event")

CASE_LINKED: Final = "case_linked"
CASE_LINK_CATEGORY: Final = "case_link"

_encoder = msgspec.json.Encoder()


_NAMESPACE_BYTES: Final = EVENT_ID_NAMESPACE.bytes


def event_id(identity: str) -> str:
    """UUIDv5 of the first accepted message's event identity: str(uuid.uuid5(namespace,
    identity)) exactly (a test holds them equal), without the UUID object, a third the cost."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + identity.encode()).digest()[:16])  # noqa: S324 - UUIDv5 is SHA-1 by definition
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


# Enum values looked up once: `.value` is a descriptor call, and this runs for every event.
_VERSIONS: Final = {version: version.value for version in Version}
_MATCHES: Final = {method: method.value for method in MatchMethod}


def _provenance(
    event: ParsedEvent, received_at: dt.datetime, match: MatchMethod | None
) -> Provenance:
    version = _VERSIONS[event.version]
    return Provenance(
        first_version=version,
        versions_seen=[version],
        message_ids={version: event.message_id},
        received_at=received_at.astimezone(dt.UTC).replace(microsecond=0),
        match=_MATCHES[match] if match else "none",
    )


def case_event(
    event: ParsedEvent,
    new_event_id: str,
    received_at: dt.datetime,
    legacy_case_id: str | None,
    case_number: str | None,
    match: MatchMethod | None,
) -> CanonicalEvent:
    """The canonical form of a newly accepted event; case ids include any known link."""
    return CanonicalEvent(
        event_id=new_event_id,
        event_type=event.event_type,
        category=event.category,
        occurred_at=event.occurred_at,
        case=CaseRef(
            case_number=case_number,
            legacy_case_id=legacy_case_id,
            case_kind=event.case_kind,
            injury_date=event.injury_date,
        ),
        person=Person(cpr=event.cpr, municipality_code=event.municipality_code),
        decision_date=event.decision_date,
        certificate=event.certificate,
        description=event.description,
        provenance=_provenance(event, received_at, match),
    )


def link_event(
    link: Link, event: ParsedEvent, occurred_at: dt.datetime, received_at: dt.datetime
) -> CanonicalEvent:
    """`case_linked`: tells downstream systems that an old and a new case id are one case."""
    return CanonicalEvent(
        event_id=event_id(f"link:{link.legacy_case_id}:{link.case_number}"),
        event_type=CASE_LINKED,
        category=CASE_LINK_CATEGORY,
        occurred_at=occurred_at,
        case=CaseRef(
            case_number=link.case_number,
            legacy_case_id=link.legacy_case_id,
            case_kind=event.case_kind,
            injury_date=event.injury_date,
        ),
        person=Person(cpr=link.cpr, municipality_code=event.municipality_code),
        decision_date=None,
        certificate=None,
        description=f"Tidligere sag {link.legacy_case_id} er sag {link.case_number}",
        provenance=_provenance(event, received_at, MatchMethod(link.method)),
    )


def encode(event: CanonicalEvent) -> bytes:
    return _encoder.encode(event)


def json_schema() -> dict[str, object]:
    return msgspec.json.schema(CanonicalEvent)
