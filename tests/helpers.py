"""Builders for test messages and events, so tests read like the spec's tables."""

from __future__ import annotations

import base64
import datetime as dt
import logging
import signal
import time
import uuid
from pathlib import Path

from gateway.formats import v22, v30
from gateway.model import ParsedEvent, RawMessage, Version
from tests.conftest import run_cli

UTC = dt.UTC
CPR = "1401851234"
ENVELOPE = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<ns2:Haendelsesbesked xmlns="urn:oio:sagdok:3.0.0" xmlns:ns2="urn:oio:besked:kuvert:1.0">'
    "<ns2:BeskedId><UUIDIdentifikator>{message_id}</UUIDIdentifikator></ns2:BeskedId>"
    "<ns2:BeskedVersion>1.0</ns2:BeskedVersion><ns2:Beskedkuvert><ns2:Filtreringsdata>"
    "<ns2:Beskedtype><UUIDIdentifikator>{beskedtype}</UUIDIdentifikator></ns2:Beskedtype>"
    "{related}</ns2:Filtreringsdata><ns2:Leveranceinformation><ns2:Dannelsestidspunkt>"
    "<TidsstempelDatoTid>2022-03-01T10:17:03</TidsstempelDatoTid></ns2:Dannelsestidspunkt>"
    "</ns2:Leveranceinformation></ns2:Beskedkuvert>"
    "<ns2:Beskeddata>{payload}</ns2:Beskeddata></ns2:Haendelsesbesked>"
)
RELATED = (
    "<ns2:RelateretObjekt><ns2:ObjektId><URNIdentifikator>urn:oio:cpr-nr:{cpr}"
    "</URNIdentifikator></ns2:ObjektId></ns2:RelateretObjekt>"
)


def record(
    code: str = "02",
    sagsid: str = "0001234567",
    cpr: str = CPR,
    kommune: str = "101",
    when: str = "202203011015",
    injury: str = "20220114",
    decision: str = "20220228",
    text: str = "Anmeldt skade/sygdom er afvist",
) -> str:
    return f"AESH01{sagsid}{cpr}{kommune}{code}{when}{injury}{decision}{text.ljust(60)}"


def v30_xml(
    type_code: str = "SAG_AFVIST",
    kategori: str = "AENDRING",
    number: str = "AES-2022-0004711",
    legacy: str | None = "0001234567",
    cpr: str = "140185-1234",
    kommune: str = "0101",
    when: str = "2022-03-01T10:15:42+01:00",
    ref: str = "0b4b2f8e-3c1e-4c55-9d5e-6a0f3f1c2b7a",
    extra: str = "",
) -> str:
    old = f"<TidligereSagsId>{legacy}</TidligereSagsId>" if legacy else ""
    return (
        f'<Sagshaendelse xmlns="{v30.NAMESPACE}"><Sag><Sagsnummer>{number}</Sagsnummer>{old}'
        f"</Sag><Skadelidte><CPR>{cpr}</CPR><Bopaelskommune>{kommune}</Bopaelskommune>"
        f"</Skadelidte><Haendelse><HaendelseId>{ref}</HaendelseId><Kategori>{kategori}"
        f"</Kategori><Type>{type_code}</Type><Tidspunkt>{when}</Tidspunkt></Haendelse>{extra}"
        "</Sagshaendelse>"
    )


def envelope(
    payload: str,
    version: Version,
    message_id: str | None = None,
    envelope_cpr: str | None = CPR,
    beskedtype: str | None = None,
) -> bytes:
    return ENVELOPE.format(
        message_id=message_id or str(uuid.uuid4()),
        beskedtype=beskedtype
        or (v22.BESKEDTYPE_UUID if version is Version.V2_2 else v30.BESKEDTYPE_UUID),
        related=RELATED.format(cpr=envelope_cpr) if envelope_cpr else "",
        payload=payload,
    ).encode()


def v22_inline(rec: str, **kw: object) -> bytes:
    return envelope(
        f'<Sagshaendelse xmlns="{v22.INLINE_NAMESPACE}">{rec}</Sagshaendelse>', Version.V2_2, **kw  # type: ignore[arg-type]
    )


def v22_base64(rec: str, charset: str = "ISO-8859-1", **kw: object) -> bytes:
    data = base64.b64encode(rec.encode(charset)).decode()
    return envelope(
        f'<Base64 xmlns="urn:besked:kuvert:1.0" content-type="text/plain" encoding="{charset}">'
        f"{data}</Base64>",
        Version.V2_2,
        **kw,  # type: ignore[arg-type]
    )


def v30_inline(xml: str, **kw: object) -> bytes:
    return envelope(xml, Version.V3_0, **kw)  # type: ignore[arg-type]


def v30_base64(xml: str, **kw: object) -> bytes:
    data = base64.b64encode(xml.encode()).decode()
    return envelope(
        f'<Base64 xmlns="urn:besked:kuvert:1.0" content-type="application/xml" encoding="UTF-8">'
        f"{data}</Base64>",
        Version.V3_0,
        **kw,  # type: ignore[arg-type]
    )


def raw(body: bytes, at: dt.datetime | None = None) -> RawMessage:
    return RawMessage(body, "test", at or dt.datetime(2022, 3, 1, 9, 20, tzinfo=UTC))


def event(
    version: Version,
    event_type: str = "rejected",
    at: dt.datetime = dt.datetime(2022, 3, 1, 9, 15, tzinfo=UTC),
    legacy: str | None = None,
    number: str | None = None,
    cpr: str = CPR,
    ref: str | None = None,
    message_id: str | None = None,
    alt: dt.datetime | None = None,
) -> ParsedEvent:
    """A parsed event for correlation tests; 3.0 events get a HaendelseId of their own."""
    if version is Version.V3_0 and ref is None:
        ref = str(uuid.uuid4())
    return ParsedEvent(
        version=version,
        message_id=message_id or str(uuid.uuid4()),
        formed_at=None,
        event_type=event_type,
        category="case_change",
        occurred_at=at,
        occurred_alt=alt,
        legacy_case_id=legacy,
        case_number=number,
        case_kind=None,
        injury_date=None,
        decision_date=None,
        cpr=cpr,
        municipality_code="101",
        description=None,
        certificate=None,
        event_ref=ref,
    )


def push_to_jsonl(workdir: Path, port: int, extra: str = "") -> str:
    """A gateway's TOML: a push receiver on `port` in, JSON Lines (`out.jsonl`) out, and its
    store (`g.db`) in `workdir`."""
    return f"""
[store]
path = "{workdir / 'g.db'}"
[[sources]]
type = "push"
listen = "127.0.0.1:{port}"
{extra}
[[sinks]]
type = "jsonl"
path = "{workdir / 'out.jsonl'}"
"""


def replayed_store(workdir: Path, body: bytes, *options: str) -> Path:
    """A store holding one message, replayed with the CLI and these options."""
    inbox = workdir / "in"
    inbox.mkdir()
    (inbox / "001.xml").write_bytes(body)
    store = workdir / "s.db"
    run_cli("replay", str(inbox), "--store", str(store), "--output", str(workdir / "o.jsonl"),
            *options)
    return store


def log_a_cpr_in_a_worker() -> None:
    """Run in a parse worker by tests/test_workers.py: what its log lines look like."""
    logging.getLogger("aes_gateway.decide").error("the parser failed on 1401851234")


def parse_worker(parent: int) -> int:
    """The parse worker of a gateway or replay (not multiprocessing's tracker), once its
    initializer has run: it ignores SIGTERM, the parent's to act on."""
    for _ in range(400):
        for child in children(parent):
            status = Path(f"/proc/{child}/status").read_text()
            ignored = int(status.split("SigIgn:")[1].split()[0], 16)
            if not _is_tracker(child) and ignored & (1 << (signal.SIGTERM - 1)):
                return child
        time.sleep(0.05)
    raise AssertionError("no parse worker started")


def resource_tracker(parent: int) -> int:
    """multiprocessing's resource tracker, the other child of a gateway with a parse worker."""
    trackers = [child for child in children(parent) if _is_tracker(child)]
    assert len(trackers) == 1, trackers
    return trackers[0]


def alive(pid: int) -> bool:
    """Running, neither gone nor a zombie waiting for its parent."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return status.split("State:")[1].split()[0] != "Z"


def children(parent: int) -> list[int]:
    """The processes `parent` started; none once it has ended."""
    try:
        return [int(c) for c in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
    except OSError:
        return []


def _is_tracker(pid: int) -> bool:
    return "resource_tracker" in Path(f"/proc/{pid}/cmdline").read_text()
