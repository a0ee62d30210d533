"""The start-up heap is frozen while an app runs, and handed back when the last one stops."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from app.core.gc_tuning import YOUNG_THRESHOLD, startup_heap_frozen

BACKEND = Path(__file__).resolve().parents[2]


def test_frozen_within_and_restored_after() -> None:
    # In a fresh interpreter: this one may be running apps of other tests, which hold the freeze.
    script = textwrap.dedent(
        """
        import gc
        from app.core.gc_tuning import YOUNG_THRESHOLD, startup_heap_frozen

        before = gc.get_threshold()
        assert gc.get_freeze_count() == 0
        with startup_heap_frozen():
            assert gc.get_freeze_count() > 0
            assert gc.get_threshold() == (YOUNG_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() == 0, gc.get_freeze_count()
        assert gc.get_threshold() == before, gc.get_threshold()
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(BACKEND)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr


def test_an_app_that_stops_does_not_thaw_one_still_running() -> None:
    with startup_heap_frozen():
        assert gc.get_freeze_count() > 0
        with startup_heap_frozen():
            assert gc.get_threshold()[0] == YOUNG_THRESHOLD
        # Still frozen. Not "as many as before": a frozen object whose last reference goes is
        # freed and leaves the count (other tests' objects in a parallel run), while a thaw
        # (`gc.unfreeze()`) empties it.
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD
