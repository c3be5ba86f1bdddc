"""Time as the Redis server tells it, so that schedulers on hosts whose clocks disagree judge due times alike.

The offset between this host's clock and the server's is measured with ``TIME`` (half the round trip taken off)
when the loop starts and every ``REFRESH`` seconds; in between, the host's clock plus the offset is read without a
round trip. Until the first measurement the offset is zero: an instance that never runs the loop (a producer, an
explicit ``enqueue_jobs()``) keeps the host's clock.
"""

from __future__ import annotations

import logging
import time
from typing import Any

logger = logging.getLogger(__name__)

REFRESH = 60.0
"""Seconds between two measurements: clocks drift by milliseconds a day, steps are what this catches."""
MAX_ROUND_TRIP = 0.5
"""A slower answer says too little about when the server read its clock: the measurement is dropped."""
REPORTED_SKEW = 1.0
"""Seconds of disagreement worth a warning in the log."""


class ServerClock:
    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.offset = 0.0
        self._measured_at: float | None = None

    def now(self) -> float:
        """Epoch seconds by the server's clock (the host's clock plus the last offset measured)."""
        return time.time() + self.offset

    def refresh_if_due(self) -> None:
        if self._measured_at is None or time.monotonic() - self._measured_at >= REFRESH:
            self.measure()

    def measure(self) -> None:
        self._measured_at = time.monotonic()  # a failed measurement is tried again after REFRESH, too
        before = time.time()
        seconds, microseconds = self.connection.time()
        after = time.time()
        if after - before > MAX_ROUND_TRIP:
            return
        offset = seconds + microseconds / 1e6 - (before + after) / 2
        if abs(offset) >= REPORTED_SKEW and abs(offset - self.offset) >= REPORTED_SKEW / 2:
            logger.warning(
                "This host's clock is %.3f s %s the Redis server's; due times follow the server's",
                abs(offset), 'behind' if offset > 0 else 'ahead of',
            )  # fmt: skip
        self.offset = offset
