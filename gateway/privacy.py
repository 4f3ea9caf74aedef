"""Per-sink CPR handling: full, pseudonymised (keyed HMAC-SHA256) or omitted."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

import msgspec

from gateway.model import CanonicalEvent
from gateway.ports import OutboxRow, Sink

_decoder = msgspec.json.Decoder(CanonicalEvent)
_encoder = msgspec.json.Encoder()


def pseudonym(cpr: str, secret: bytes) -> str:
    """The same person gives the same pseudonym under one secret, and it cannot be reversed
    without the secret (a plain hash of a CPR can: there are only some 10^9 of them)."""
    return hmac.new(secret, cpr.encode(), hashlib.sha256).hexdigest()


def apply(body: bytes, mode: str, secret: bytes | None) -> bytes:
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
