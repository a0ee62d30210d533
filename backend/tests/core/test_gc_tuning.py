"""The start-up heap is frozen while an app runs, and handed back when it stops."""

from __future__ import annotations

import gc

from app.core.gc_tuning import YOUNG_THRESHOLD, startup_heap_frozen


def test_frozen_within_and_restored_after() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with startup_heap_frozen():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *before[1:])
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
