"""CPR handling: per sink (full, pseudonymised with keyed HMAC-SHA256, or omitted), and in a
raw message shown to an operator (masked)."""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Final

import msgspec

from gateway.formats import v22
from gateway.logs import mask
from gateway.model import CanonicalEvent
from gateway.normalize import mask_cpr
from gateway.ports import OutboxRow, Sink

_decoder = msgspec.json.Decoder(CanonicalEvent)
_encoder = msgspec.json.Encoder()


def pseudonym(cpr: str, secret: bytes) -> str:
    """The same person gives the same pseudonym under one secret, and it cannot be reversed
    without the secret (a plain hash of a CPR can: there are only some 10^9 of them)."""
    return hmac.new(secret, cpr.encode(), hashlib.sha256).hexdigest()


def apply(body: bytes, mode: str, secret: bytes | None) -> bytes:
    """A canonical event as a sink of this mode sees it. Without `full`, a CPR that a
    caseworker typed into free text (the description, a certificate's specialty) is masked
    as in the logs, too."""
    if mode == "full":
        return body
    event = _decoder.decode(body)
    cpr = event.person.cpr
    if cpr is not None:
        if mode == "omitted":
            event.person.cpr = None
        else:
            assert secret is not None  # noqa: S101 - the configuration requires one
            event.person.cpr = pseudonym(cpr, secret)
    if event.description is not None:
        event.description = mask(event.description)
    certificate = event.certificate
    if certificate is not None and certificate.specialty is not None:
        event.certificate = msgspec.structs.replace(certificate,
                                                    specialty=mask(certificate.specialty))
    return _encoder.encode(event)


class CprFilter:
    """Wraps a sink so its consumers see the CPR as configured."""

    def __init__(self, sink: Sink, mode: str, secret: str | None) -> None:
        self.sink = sink
        self.name = sink.name
        self.mode = mode
        self.secret = secret.encode() if secret else None

    async def send(self, rows: Sequence[OutboxRow]) -> None:
        if self.mode == "full":
            await self.sink.send(rows)
            return
        await self.sink.send([
            msgspec.structs.replace(row, body=apply(row.body, self.mode, self.secret))
            for row in rows
        ])


# Where a raw message holds a CPR that no digit pattern finds: the 2.2 record's CPR field, in a
# run of other digits; a `cpr-nr` URN or a 3.0 <CPR> element holding a malformed value; and
# anything inside Base64.
_URN_CPR: Final = re.compile(r"(urn:oio:cpr-nr:)([^<\s]*)")
_CPR_ELEMENT: Final = re.compile(r"(<(?:[\w.-]+:)?CPR\b[^>]*>)([^<]*)(?=<)")
_TEXT_PAYLOAD: Final = re.compile(r"(<(?:[\w.-]+:)?Sagshaendelse\b[^>]*>)([^<]*)(?=</)")
_BASE64: Final = re.compile(r"(<(?:[\w.-]+:)?Base64\b([^>]*)>)([^<]*)(?=</)")
_CHARSET: Final = re.compile(r"""\bencoding\s*=\s*["']([^"']{1,40})["']""")
_SHOWN: Final = 6  # a CPR's first six characters, the birth date, stay readable


def mask_message(body: bytes) -> str:
    """A raw message as text for an operator's eyes, with every CPR in it masked: as the logs
    mask it (`140185-****`), also where it sits among other digits or is malformed, and with
    each Base64 payload shown decoded (and masked) instead of as Base64."""
    text = body.decode("utf-8", "replace")
    text = _BASE64.sub(_decoded, text)  # first: what it decodes to is masked below
    text = _URN_CPR.sub(lambda m: m[1] + _masked_value(m[2]), text)
    text = _CPR_ELEMENT.sub(lambda m: m[1] + _masked_value(m[2]), text)
    text = _TEXT_PAYLOAD.sub(lambda m: m[1] + _masked_record(m[2]), text)
    return mask(text)


def _masked_value(value: str) -> str:
    """A CPR value, well-formed or not, masked as the logs mask one; blank stays blank."""
    return mask_cpr(value.strip()) if value.strip() else value


def _masked_record(text: str) -> str:
    """A 2.2 fixed-format record with the CPR field's last four characters hidden, in place
    (the record keeps its layout)."""
    start = len(text) - len(text.lstrip(" \r\n"))
    first = start + v22.CPR.start - 1 + _SHOWN
    last = start + v22.CPR.start - 1 + v22.CPR.length
    if len(text) <= first:
        return text
    return text[:first] + "*" * (min(last, len(text)) - first) + text[last:]


def _decoded(match: re.Match[str]) -> str:
    """A Base64 element shown decoded, its CPRs masked; one that does not decode is withheld
    (decoded leniently it may still name the person)."""
    start, attributes, content = match[1], match[2], match[3]
    try:
        data = base64.b64decode("".join(content.split()), validate=True)
    except (binascii.Error, ValueError):
        return (f"{start}<!-- {len(content)} characters that are not Base64, withheld: they may "
                "hold a CPR (quarantine show --raw prints them) -->")
    charset = _CHARSET.search(attributes)
    try:
        decoded = data.decode(codecs.lookup(charset[1]).name if charset else "utf-8")
    except (LookupError, UnicodeDecodeError):
        decoded = data.decode("latin-1")  # for display: every byte a character
    if not decoded.lstrip().startswith("<"):  # a 2.2 record; XML is masked with the rest
        decoded = _masked_record(decoded)
    return f"{start}<!-- decoded from Base64 for display, CPR masked -->{decoded}"
