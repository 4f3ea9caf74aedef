"""The cycle collector kept off the hot path: `aes-gateway run` freezes its start-up heap, so
that full collections (which paused the event loop for 30-36 ms each) no longer scan it, and
what is made for every message is not tracked at all."""

from __future__ import annotations

import gc

from adapters.runtime import freeze_startup_heap
from gateway import decide


def test_the_start_up_heap_is_left_out_of_later_collections() -> None:
    assert any(o is decide.prepare for o in gc.get_objects(generation=2)), "scanned before"
    try:
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > 0
        assert not any(o is decide.prepare for o in gc.get_objects(generation=2))
    finally:
        gc.unfreeze()  # the test process goes on collecting as before


def test_what_is_made_for_every_message_is_not_tracked_by_the_collector() -> None:
    """Untracked by msgspec's own rule (plain values) or by `gc=False` (gateway/model.py says
    which and why): tracked, they set off the cycle collector every few hundred messages."""
    from gateway.correlate import CorrelationState, Decision
    from gateway.envelope import EnvelopeReader
    from gateway.model import Outcome
    from tests import helpers as h

    item = decide.prepare(h.raw(h.v30_base64(h.v30_xml())), EnvelopeReader())
    assert item.event is not None, item.reason
    state = CorrelationState()
    results, effects = decide.decide_batch([item], state, 120)
    made = [item, item.raw, item.event, results[0], *effects.new_events.values(),
            *effects.output, effects.output[0].provenance, Decision(Outcome.EMITTED, "id")]
    assert [type(o).__name__ for o in made if gc.is_tracked(o)] == []
