"""Haendelsesbesked (and push ModtagBeskedInput) to envelope fields and a decoded payload.

XML is parsed hardened: no DTD, no entity expansion, no network, bounded size and depth.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import datetime as dt
import hashlib
from collections.abc import Mapping
from typing import Final

import msgspec
from lxml import etree

from gateway.formats import DEFAULT_BESKEDTYPES, DEFAULT_CHARSETS, v22, v30
from gateway.model import (
    BadInput,
    Envelope,
    ParsedEvent,
    PayloadText,
    PayloadXml,
    Reason,
    Version,
)
from gateway.normalize import normalize_cpr, to_utc

KUVERT: Final = "urn:oio:besked:kuvert:1.0"
SAGDOK: Final = "urn:oio:sagdok:3.0.0"
STS: Final = "urn:oio:sts:1.0.0"
BASE64_NS: Final = "urn:besked:kuvert:1.0"
CPR_URN: Final = "urn:oio:cpr-nr:"

HAENDELSESBESKED: Final = f"{{{KUVERT}}}Haendelsesbesked"
MODTAG_BESKED_INPUT: Final = f"{{{STS}}}ModtagBeskedInput"
BASE64_TAG: Final = f"{{{BASE64_NS}}}Base64"

DEFAULT_MAX_BYTES: Final = 1024 * 1024


def _k(*names: str) -> str:
    return "/".join(f"{{{KUVERT}}}{name}" for name in names)


def _s(name: str) -> str:
    return f"{{{SAGDOK}}}{name}"


BESKED_ID: Final = _k("BeskedId") + "/" + _s("UUIDIdentifikator")
BESKEDTYPE: Final = _k("Beskedkuvert", "Filtreringsdata", "Beskedtype") + "/" + _s(
    "UUIDIdentifikator"
)
RELATERET_OBJEKT_URNS: Final = (
    _k("Beskedkuvert", "Filtreringsdata", "RelateretObjekt", "ObjektId")
    + "/"
    + _s("URNIdentifikator")
)
DANNELSESTIDSPUNKT: Final = (
    _k("Beskedkuvert", "Leveranceinformation", "Dannelsestidspunkt")
    + "/"
    + _s("TidsstempelDatoTid")
)
BESKEDDATA: Final = _k("Beskeddata")

_PARSER: Final = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    remove_comments=True,
    remove_pis=True,
    collect_ids=False,
)


def parse_xml(data: bytes) -> etree._Element:
    """Hardened XML parse: refuses DTDs (and so every entity trick).

    Without huge_tree, libxml2 also refuses nesting deeper than 256 and text nodes over 10 MB.
    """
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise BadInput(Reason.FORBIDDEN_DTD, "XML with a DTD or entity declarations is refused")
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        reason = Reason.BAD_ENCODING if "encod" in str(exc).lower() else Reason.NOT_XML
        raise BadInput(reason, f"XML does not parse: {str(exc)[:120]}") from None
    except ValueError as exc:  # e.g. an unsupported encoding declaration
        raise BadInput(Reason.BAD_ENCODING, f"XML does not parse: {str(exc)[:120]}") from None
    if root.getroottree().docinfo.doctype:  # type: ignore[union-attr]
        raise BadInput(Reason.FORBIDDEN_DTD, "XML with a DTD is refused")
    return root


def message_key(body: bytes) -> str:
    """Identity of a message whose BeskedId cannot be read: its content hash."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


class EnvelopeReader:
    """Reads envelopes with a configurable Beskedtype table and size limit."""

    def __init__(
        self,
        beskedtypes: Mapping[str, Version] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._beskedtypes = {k.lower(): v for k, v in (beskedtypes or DEFAULT_BESKEDTYPES).items()}
        self._max_bytes = max_bytes

    def read(self, body: bytes) -> Envelope:
        if len(body) > self._max_bytes:
            raise BadInput(Reason.TOO_LARGE, f"message of {len(body)} bytes exceeds the limit")
        root = parse_xml(body)
        if root.tag == MODTAG_BESKED_INPUT:
            inner = root.find(HAENDELSESBESKED)
            if inner is None:
                raise BadInput(
                    Reason.UNKNOWN_ENVELOPE, "ModtagBeskedInput without Haendelsesbesked"
                )
            root = inner
        if root.tag != HAENDELSESBESKED:
            raise BadInput(Reason.UNKNOWN_ENVELOPE, f"root {str(root.tag)[:80]!r} is no envelope")
        message_id = _required_text(root, BESKED_ID, "BeskedId")
        beskedtype = _required_text(root, BESKEDTYPE, "Beskedtype").lower()
        version = self._beskedtypes.get(beskedtype)
        if version is None:
            raise BadInput(Reason.UNKNOWN_BESKEDTYPE, f"Beskedtype {beskedtype[:40]!r} unknown")
        beskeddata = root.find(BESKEDDATA)
        if beskeddata is None or len(beskeddata) == 0:
            raise BadInput(Reason.MISSING_ENVELOPE_FIELD, "Beskeddata is missing or empty")
        return Envelope(
            message_id=message_id,
            version=version,
            formed_at=_formed_at(root),
            cprs=tuple(_envelope_cprs(root)),
            payload=_payload(beskeddata[0], version),
        )


def _required_text(root: etree._Element, path: str, name: str) -> str:
    element = root.find(path)
    text = (element.text or "").strip() if element is not None else ""
    if not text:
        raise BadInput(Reason.MISSING_ENVELOPE_FIELD, f"envelope has no {name}")
    return text


def _formed_at(root: etree._Element) -> dt.datetime | None:
    element = root.find(DANNELSESTIDSPUNKT)
    if element is None or not element.text:
        return None
    try:
        return to_utc(dt.datetime.fromisoformat(element.text.strip()))[0]
    except ValueError:
        return None  # only used as the stream's clock; the receive time stands in


def _envelope_cprs(root: etree._Element) -> list[str]:
    cprs = []
    for element in root.iterfind(RELATERET_OBJEKT_URNS):
        urn = (element.text or "").strip()
        if urn.startswith(CPR_URN):
            try:
                cprs.append(normalize_cpr(urn[len(CPR_URN) :]))
            except BadInput:
                raise BadInput(
                    Reason.ENVELOPE_PAYLOAD_MISMATCH, "envelope names an invalid CPR"
                ) from None
    return cprs


def _payload(element: etree._Element, version: Version) -> PayloadText | PayloadXml:
    if element.tag == BASE64_TAG:
        data = _base64(element.text or "")
        charset = element.get("encoding") or DEFAULT_CHARSETS[version]
        if version is Version.V2_2:
            return PayloadText(_decode(data, charset))
        _decode(data, charset)  # validates the declared charset; lxml decodes again
        return PayloadXml(data=data, element=None)
    if version is Version.V2_2:
        if element.tag != f"{{{v22.INLINE_NAMESPACE}}}Sagshaendelse" or len(element):
            raise BadInput(Reason.WRONG_PAYLOAD_FORM, "2.2 payload is not a text Sagshaendelse")
        return PayloadText(element.text or "")
    if element.tag != v30.ROOT:
        raise BadInput(Reason.WRONG_PAYLOAD_FORM, f"3.0 payload {str(element.tag)[:80]!r}")
    return PayloadXml(data=None, element=element)


def _base64(text: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(Reason.BAD_BASE64, "Beskeddata Base64 does not decode") from None


def _decode(data: bytes, charset: str) -> str:
    try:
        codecs.lookup(charset)
        return data.decode(charset)
    except LookupError:
        raise BadInput(Reason.BAD_ENCODING, f"unknown charset {charset[:40]!r}") from None
    except UnicodeDecodeError:
        raise BadInput(Reason.BAD_ENCODING, f"payload is not valid {charset[:40]}") from None


def parse_event(envelope: Envelope) -> ParsedEvent:
    """The envelope's payload as a normalised event; BadInput if it is bad."""
    payload = envelope.payload
    if isinstance(payload, PayloadText):
        event = v22.parse_record(payload.text, envelope.message_id)
    else:
        element = payload.element if payload.data is None else parse_xml(payload.data)
        assert isinstance(element, etree._Element)  # noqa: S101 - set by _payload
        event = v30.parse_element(element, envelope.message_id)
    if any(cpr != event.cpr for cpr in envelope.cprs):
        raise BadInput(
            Reason.ENVELOPE_PAYLOAD_MISMATCH, "the envelope's CPR differs from the payload's"
        )
    return msgspec.structs.replace(event, formed_at=envelope.formed_at)
