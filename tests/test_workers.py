"""What crosses from a parse worker: everything but the bodies nobody reads."""

from __future__ import annotations

from gateway.decide import prepare
from gateway.envelope import EnvelopeReader
from gateway.workers import pack, unpack
from tests import helpers as h


def test_a_batch_crosses_whole_but_for_the_bodies_of_parsed_messages() -> None:
    reader = EnvelopeReader()
    bodies = [h.v30_inline(h.v30_xml()), b"<not xml", h.v22_base64(h.record())]
    batch = [prepare(h.raw(body), reader) for body in bodies]
    crossed = unpack(pack(batch))
    assert [c.raw.body for c in crossed] == [b"", b"<not xml", b""]  # the quarantine keeps one
    for before, after in zip(batch, crossed, strict=True):
        assert (after.key, after.version, after.event, after.reason, after.detail) == (
            before.key, before.version, before.event, before.reason, before.detail)
        assert (after.raw.source, after.raw.received_at) == (
            before.raw.source, before.raw.received_at)
