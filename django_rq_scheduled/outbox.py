"""Deliveries out of the leader (mails, webhooks, pings, check-ins), in a bounded queue served by a daemon thread of
their own: a slow or hanging receiver never delays the loop or the reading of runs. A full queue drops what comes
(logged), it never blocks."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

OUTBOX_SIZE = 1000
"""Deliveries an outbox holds: a receiver that hangs for its whole timeout and retries on each keeps at most this
many waiting (each a few kilobytes) before new ones are dropped."""


class Outbox:
    """One notifier's queue of deliveries and the daemon thread that makes them, in order, one at a time."""

    def __init__(self, name: str, size: int = OUTBOX_SIZE) -> None:
        self.name = name
        self._queue: queue.Queue[tuple[Callable[[], object], str]] = queue.Queue(maxsize=size)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.dropped = 0

    def post(self, delivery: Callable[[], object], what: str) -> bool:
        """Queues ``delivery`` (``what`` names it in the logs); False, with a warning, if the queue is full."""
        self._start()
        try:
            self._queue.put_nowait((delivery, what))
        except queue.Full:
            self._drop(what)
            return False
        return True

    def _drop(self, what: str) -> None:
        if not self.dropped:  # once per streak: a hanging receiver would otherwise fill the log as well
            logger.warning('%s: %d deliveries wait already; dropping %s (and any more until it drains)',
                           self.name, self._queue.maxsize, what)  # fmt: skip
        self.dropped += 1

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        while True:
            delivery, what = self._queue.get()
            try:
                delivery()
            except Exception:
                logger.exception('%s: could not deliver %s', self.name, what)
            finally:
                self._queue.task_done()
                self._note_drained()

    def _note_drained(self) -> None:
        if self.dropped and self._queue.empty():
            logger.warning('%s drained; %d deliveries were dropped while it was full', self.name, self.dropped)
            self.dropped = 0

    def wait(self, timeout: float) -> bool:
        """Waits until every queued delivery is made (tests, benchmarks); returns whether they all were."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True
