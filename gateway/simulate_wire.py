"""The simulated truth (gateway/simulate.py) rendered in the wire formats: both envelopes, both
payload versions in both Beskeddata forms, and bad input of every kind, each made from a good
message by one change."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Final
from xml.sax.saxutils import escape

from gateway.formats import v22, v30
from gateway.model import Reason, Version
from gateway.normalize import DANISH_TIME

if TYPE_CHECKING:  # the simulator renders through this module
    from gateway.simulate import Simulator, TrueEvent

TYPE_BY_EVENT: Final = {known.event_type: code for code, known in v30.TYPES.items()}
CODE_BY_EVENT: Final = {known.event_type: code for code, known in v22.CODES.items()}

ENVELOPE: Final = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<ns2:Haendelsesbesked xmlns="urn:oio:sagdok:3.0.0" xmlns:ns2="urn:oio:besked:kuvert:1.0">'
    "<ns2:BeskedId><UUIDIdentifikator>{message_id}</UUIDIdentifikator></ns2:BeskedId>"
    "<ns2:BeskedVersion>1.0</ns2:BeskedVersion><ns2:Beskedkuvert><ns2:Filtreringsdata>"
    "<ns2:Beskedtype><UUIDIdentifikator>{beskedtype}</UUIDIdentifikator></ns2:Beskedtype>"
    "<ns2:TilladtModtager><URNIdentifikator>urn:oio:kommunekode:{municipality}"
    "</URNIdentifikator></ns2:TilladtModtager>"
    "<ns2:RelateretObjekt><ns2:ObjektId><URNIdentifikator>urn:oio:cpr-nr:{cpr}"
    "</URNIdentifikator></ns2:ObjektId><ns2:ObjektType><UUIDIdentifikator>"
    "ce7fcf97-a8a2-447a-8690-d38aa0f6e23c</UUIDIdentifikator></ns2:ObjektType>"
    "</ns2:RelateretObjekt></ns2:Filtreringsdata><ns2:Leveranceinformation>"
    "<ns2:Dannelsestidspunkt><TidsstempelDatoTid>{formed}</TidsstempelDatoTid>"
    "</ns2:Dannelsestidspunkt><ns2:TransaktionsId><UUIDIdentifikator>{transaction}"
    "</UUIDIdentifikator></ns2:TransaktionsId></ns2:Leveranceinformation></ns2:Beskedkuvert>"
    "<ns2:Beskeddata>{payload}</ns2:Beskeddata></ns2:Haendelsesbesked>"
)
PUSH_OPEN: Final = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<ns4:ModtagBeskedInput xmlns="urn:oio:sagdok:3.0.0" '
    'xmlns:ns2="urn:oio:besked:kuvert:1.0" xmlns:ns4="urn:oio:sts:1.0.0">'
)
TEXTS: Final = {code.event_type: code.meaning for code in v22.CODES.values()}


def local_text(at: dt.datetime, fmt: str) -> str:
    return at.astimezone(DANISH_TIME).strftime(fmt)


def v22_record(event: TrueEvent, overrides: dict[str, str] | None = None) -> str:
    """The fixed-format record, laid out by the same field table the parser reads."""
    case = event.case
    values = {
        "POSTTYPE": v22.POSTTYPE_VALUE,
        "LAYOUTVERSION": "01",
        "SAGSID": f"{case.legacy_id:010d}",
        "CPR": case.cpr,
        "BOPAELSKOMMUNE": case.municipality,
        "HAENDELSESKODE": CODE_BY_EVENT[event.event_type],
        "HAENDELSESTIDSPUNKT": event.local_text_override
        or local_text(event.occurred_at, "%Y%m%d%H%M"),
        "SKADESDATO": local_text(event.occurred_at - dt.timedelta(days=30), "%Y%m%d"),
        "AFGOERELSESDATO": " " * 8,
        "HAENDELSESTEKST": TEXTS[event.event_type],
    }
    values.update(overrides or {})
    record = [" "] * v22.RECORD_LENGTH
    for name, value in values.items():
        spec: v22.Field = getattr(v22, name)
        text = value.ljust(spec.length)[: spec.length]
        record[spec.start - 1 : spec.start - 1 + spec.length] = list(text)
    return "".join(record).rstrip()


def v30_payload(event: TrueEvent, overrides: dict[str, str | None] | None = None) -> str:
    case = event.case
    type_code = TYPE_BY_EVENT[event.event_type]
    with_offset = event.key % 5 != 0
    values: dict[str, str | None] = {
        "Sagsnummer": case.number,
        "TidligereSagsId": f"{case.legacy_id:010d}" if event.v3_legacy else None,
        "Sagstype": "ARBEJDSULYKKE" if event.key % 2 else "ERHVERVSSYGDOM",
        "CPR": f"{case.cpr[:6]}-{case.cpr[6:]}" if event.key % 3 else case.cpr,
        "Bopaelskommune": f"0{case.municipality}",
        "HaendelseId": event.event_ref,
        "Kategori": v30.TYPES[type_code].kategori,
        "Type": type_code,
        "Tidspunkt": event.occurred_at.astimezone(DANISH_TIME).isoformat()
        if with_offset
        else local_text(event.occurred_at, "%Y-%m-%dT%H:%M:%S"),
        "Tekst": TEXTS[event.event_type],
    }
    values.update(overrides or {})

    def element(name: str) -> str:
        value = values.get(name)
        return "" if value is None else f"<{name}>{escape(value)}</{name}>"

    sag = "".join(element(n) for n in ("Sagsnummer", "TidligereSagsId", "Sagstype"))
    person = element("CPR") + element("Bopaelskommune")
    haendelse = "".join(element(n) for n in ("HaendelseId", "Kategori", "Type", "Tidspunkt",
                                              "Tekst"))
    return (f'<Sagshaendelse xmlns="{v30.NAMESPACE}"><Sag>{sag}</Sag>'
            f"<Skadelidte>{person}</Skadelidte><Haendelse>{haendelse}"
            "<FremtidigtFelt>ignoreres</FremtidigtFelt></Haendelse></Sagshaendelse>")


def wrap_base64(data: bytes, content_type: str, charset: str) -> str:
    return (f'<Base64 xmlns="urn:besked:kuvert:1.0" content-type="{content_type}" '
            f'encoding="{charset}">{base64.b64encode(data).decode()}</Base64>')


def payload_for(sim: Simulator, event: TrueEvent, version: Version) -> str:
    inline = sim.rng.random() < 0.5
    if version is Version.V2_2:
        record = v22_record(event)
        if inline:
            return f'<Sagshaendelse xmlns="{v22.INLINE_NAMESPACE}">{escape(record)}</Sagshaendelse>'
        return wrap_base64(record.encode("iso-8859-1"), "text/plain", "ISO-8859-1")
    xml = v30_payload(event)
    return xml if inline else wrap_base64(xml.encode(), "application/xml", "UTF-8")


def envelope(
    sim: Simulator, event: TrueEvent, version: Version, message_id: str, arrival: dt.datetime,
    payload: str, beskedtype: str | None = None, cpr: str | None = None,
) -> str:
    return ENVELOPE.format(
        message_id=message_id,
        beskedtype=beskedtype or {Version.V2_2: v22.BESKEDTYPE_UUID,
                                  Version.V3_0: v30.BESKEDTYPE_UUID}[version],
        municipality=event.case.municipality,
        cpr=cpr or event.case.cpr,
        # with its offset: a local time in the autumn's repeated hour would be ambiguous
        formed=arrival.astimezone(DANISH_TIME).isoformat(timespec="seconds"),
        transaction=sim.uuid(),
        payload=payload,
    )


def render_message(
    sim: Simulator, event: TrueEvent, version: Version, message_id: str, arrival: dt.datetime
) -> bytes:
    text = envelope(sim, event, version, message_id, arrival, payload_for(sim, event, version))
    if version is Version.V3_0 and sim.rng.random() < 0.1:  # a captured push body
        text = PUSH_OPEN + text.split("?>", 1)[1] + "</ns4:ModtagBeskedInput>"
    return text.encode()


# --- bad input, one maker per reason ----------------------------------------------------------

BadMaker = Callable[["Simulator", "TrueEvent", str, dt.datetime], bytes]


def _v22_with(**overrides: str) -> BadMaker:
    def make(sim: Simulator, event: TrueEvent, message_id: str, at: dt.datetime) -> bytes:
        record = v22_record(event, overrides)
        payload = f'<Sagshaendelse xmlns="{v22.INLINE_NAMESPACE}">{escape(record)}</Sagshaendelse>'
        return envelope(sim, event, Version.V2_2, message_id, at, payload).encode()
    return make


def _v30_with(**overrides: str | None) -> BadMaker:
    def make(sim: Simulator, event: TrueEvent, message_id: str, at: dt.datetime) -> bytes:
        payload = v30_payload(event, overrides)
        return envelope(sim, event, Version.V3_0, message_id, at, payload).encode()
    return make


def _good(sim: Simulator, event: TrueEvent, message_id: str, at: dt.datetime) -> str:
    return envelope(sim, event, Version.V3_0, message_id, at, v30_payload(event))


BAD_INPUT: Final[dict[Reason, BadMaker]] = {
    Reason.TOO_LARGE: lambda s, e, m, a: _good(s, e, m, a).encode() + b" " * (1024 * 1024),
    Reason.NOT_XML: lambda s, e, m, a: _good(s, e, m, a).encode()[:-40],
    Reason.FORBIDDEN_DTD: lambda s, e, m, a: (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
        + _good(s, e, m, a).split("?>", 1)[1].replace("ignoreres", "&lol2;")
    ).encode(),
    Reason.UNKNOWN_ENVELOPE: lambda s, e, m, a: _good(s, e, m, a)
    .replace("ns2:Haendelsesbesked", "ns2:Forretningsbesked").encode(),
    Reason.MISSING_ENVELOPE_FIELD: lambda s, e, m, a: _good(s, e, m, a)
    .replace(f"<ns2:BeskedId><UUIDIdentifikator>{m}</UUIDIdentifikator></ns2:BeskedId>", "")
    .encode(),
    Reason.UNKNOWN_BESKEDTYPE: lambda s, e, m, a: envelope(
        s, e, Version.V3_0, m, a, v30_payload(e), beskedtype=s.uuid()).encode(),
    Reason.BAD_BASE64: lambda s, e, m, a: envelope(
        s, e, Version.V3_0, m, a,
        '<Base64 xmlns="urn:besked:kuvert:1.0" encoding="UTF-8">PFNh*Z3No!!</Base64>').encode(),
    Reason.BAD_ENCODING: lambda s, e, m, a: envelope(
        s, e, Version.V2_2, m, a, wrap_base64(v22_record(e).encode(), "text/plain",
                                              "X-UNKNOWN-CHARSET")).encode(),
    Reason.WRONG_PAYLOAD_FORM: lambda s, e, m, a: envelope(
        s, e, Version.V2_2, m, a, v30_payload(e)).encode(),
    Reason.BAD_RECORD: _v22_with(POSTTYPE="AESX"),
    Reason.MISSING_ELEMENT: _v30_with(HaendelseId=None),
    Reason.UNKNOWN_EVENT_CODE: _v22_with(HAENDELSESKODE="99"),
    Reason.UNKNOWN_TYPE: _v30_with(Type="SAG_UKENDT"),
    Reason.CATEGORY_MISMATCH: _v30_with(Kategori="ATTEST", Type="SAG_AFVIST"),
    Reason.INVALID_CPR: _v22_with(CPR="3213851234"),
    Reason.INVALID_MUNICIPALITY: _v22_with(BOPAELSKOMMUNE="1X1"),
    Reason.INVALID_TIME: _v22_with(HAENDELSESTIDSPUNKT="202213011015"),
    Reason.INVALID_DATE: _v22_with(SKADESDATO="20220230"),
    Reason.INVALID_CASE_ID: _v30_with(Sagsnummer="SAG-1"),
    Reason.INVALID_VALUE: _v30_with(HaendelseId="not-a-uuid"),
    Reason.ENVELOPE_PAYLOAD_MISMATCH: lambda s, e, m, a: envelope(
        s, e, Version.V3_0, m, a, v30_payload(e), cpr=s.cpr()).encode(),
}
