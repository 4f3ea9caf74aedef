"""`aes-gateway run` freezes its start-up heap, so that full garbage collections (which paused
the event loop for 30-36 ms each) no longer scan it."""

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
