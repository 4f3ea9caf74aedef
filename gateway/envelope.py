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
from gateway.xmlsafe import check_not_mislabelled_utf8, parse_xml

KUVERT: Final = "urn:oio:besked:kuvert:1.0"
SAGDOK: Final = "urn:oio:sagdok:3.0.0"
STS: Final = "urn:oio:sts:1.0.0"
BASE64_NS: Final = "urn:besked:kuvert:1.0"
CPR_URN: Final = "urn:oio:cpr-nr:"

HAENDELSESBESKED: Final = f"{{{KUVERT}}}Haendelsesbesked"
MODTAG_BESKED_INPUT: Final = f"{{{STS}}}ModtagBeskedInput"
BASE64_TAG: Final = f"{{{BASE64_NS}}}Base64"

DEFAULT_MAX_BYTES: Final = 1024 * 1024


# A message refused as too large is kept whole up to this size, so that `quarantine replay`
# decides it once `max_message_bytes` is raised; RabbitMQ 4 carries no larger by default.
KEPT_WHOLE_UP_TO: Final = 16 * 1024 * 1024


def oversized_keep(max_bytes: int) -> int:
    """How much of a message over the size limit every source keeps: all of it up to
    KEPT_WHOLE_UP_TO (or just past the limit, if that is higher), and that much of a bigger
    one: enough to show it is over, and its envelope's start, which makes it its identity.
    Whole, a message would cost memory, the store and the quarantine exchange as much as a
    sender liked (a 1.1 GB file stopped a replay: SQLite keeps no value over 1 GB)."""
    return max(max_bytes + 1, KEPT_WHOLE_UP_TO)


def oversized_said(what: str, size: int, keep: int) -> str:
    """The log line for one: its size in MB, as a byte count of ten digits (a gigabyte) would
    be masked as a CPR number."""
    return (f"{what} of {size / 1e6:.1f} MB is over the limit; its first {keep / 2**20:g} MiB "
            "go to the quarantine")


def _k(name: str) -> str:
    return f"{{{KUVERT}}}{name}"


def _s(name: str) -> str:
    return f"{{{SAGDOK}}}{name}"


# Leaf tags read from the envelope, and the parent that tells the UUIDs apart.
UUID_TAG: Final = _s("UUIDIdentifikator")
URN_TAG: Final = _s("URNIdentifikator")
TIDSSTEMPEL_TAG: Final = _s("TidsstempelDatoTid")
BESKEDDATA_TAG: Final = _k("Beskeddata")
BESKED_ID_TAG: Final = _k("BeskedId")
BESKEDTYPE_TAG: Final = _k("Beskedtype")
OBJEKT_ID_TAG: Final = _k("ObjektId")
DANNELSESTIDSPUNKT_TAG: Final = _k("Dannelsestidspunkt")


class _Fields:
    """The envelope fields, found in one C-level pass over the tags of interest."""

    __slots__ = ("beskeddata", "beskedtype", "cpr_urns", "formed_at", "message_id")

    def __init__(self, root: etree._Element) -> None:
        self.message_id: str | None = None
        self.beskedtype: str | None = None
        self.formed_at: str | None = None
        self.cpr_urns: list[str] = []
        self.beskeddata: etree._Element | None = None
        for element in root.iter(UUID_TAG, URN_TAG, TIDSSTEMPEL_TAG, BESKEDDATA_TAG):
            tag = element.tag
            if tag == BESKEDDATA_TAG:
                if self.beskeddata is None and element.getparent() is root:
                    self.beskeddata = element
                continue
            parent = element.getparent()
            parent_tag = parent.tag if parent is not None else None
            text = (element.text or "").strip()
            if tag == UUID_TAG:
                if parent_tag == BESKED_ID_TAG and self.message_id is None:
                    self.message_id = text
                elif parent_tag == BESKEDTYPE_TAG and self.beskedtype is None:
                    self.beskedtype = text
            elif tag == URN_TAG:
                if parent_tag == OBJEKT_ID_TAG:
                    self.cpr_urns.append(text)
            elif parent_tag == DANNELSESTIDSPUNKT_TAG and self.formed_at is None:
                self.formed_at = text


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
            raise BadInput(Reason.TOO_LARGE, f"message over the limit of {self._max_bytes} bytes")
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
        fields = _Fields(root)
        if not fields.message_id:
            raise BadInput(Reason.MISSING_ENVELOPE_FIELD, "envelope has no BeskedId")
        if not fields.beskedtype:
            raise BadInput(Reason.MISSING_ENVELOPE_FIELD, "envelope has no Beskedtype")
        version = self._beskedtypes.get(fields.beskedtype.lower())
        if version is None:
            raise BadInput(
                Reason.UNKNOWN_BESKEDTYPE, f"Beskedtype {fields.beskedtype[:40]!r} unknown"
            )
        if fields.beskeddata is None or len(fields.beskeddata) == 0:
            raise BadInput(Reason.MISSING_ENVELOPE_FIELD, "Beskeddata is missing or empty")
        return Envelope(
            message_id=fields.message_id,
            version=version,
            formed_at=_formed_at(fields.formed_at),
            cprs=tuple(_envelope_cprs(fields.cpr_urns)),
            payload=_payload(fields.beskeddata[0], version),
        )


def _formed_at(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return to_utc(dt.datetime.fromisoformat(text))[0]
    except (ValueError, BadInput):
        return None  # only used as the stream's clock; the receive time stands in


def _envelope_cprs(urns: list[str]) -> list[str]:
    cprs = []
    for urn in urns:
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
        return PayloadXml(data=data, element=None, charset=charset)
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
        check_not_mislabelled_utf8(data, charset)
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
        element = (payload.element if payload.data is None
                   else parse_xml(payload.data, payload.charset))
        assert isinstance(element, etree._Element)  # noqa: S101 - set by _payload
        event = v30.parse_element(element, envelope.message_id)
    if any(cpr != event.cpr for cpr in envelope.cprs):
        raise BadInput(
            Reason.ENVELOPE_PAYLOAD_MISMATCH, "the envelope's CPR differs from the payload's"
        )
    return msgspec.structs.replace(event, formed_at=envelope.formed_at)


__all__ = [
    "EnvelopeReader", "message_key", "oversized_keep", "oversized_said", "parse_event",
    "parse_xml",
]
