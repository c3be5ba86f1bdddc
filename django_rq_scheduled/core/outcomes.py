"""What a planned move decides for a due entry (``moves.Entry.outcome``), and what its run record says."""

from __future__ import annotations

ENQUEUED = 'enqueued'
SKIPPED_MISFIRE = 'skipped_misfire'
SKIPPED_OVERLAP = 'skipped_overlap'
SKIPPED_CATCHUP = 'skipped_catchup'
DEAD = 'dead'
FINISHED = 'finished'
"""The last record of a schedule whose window closed before its next slot: no run, the row is finished."""
POSTPONED = 'postponed'
"""The slot waits for its jitter delay: nothing is decided on it yet."""
