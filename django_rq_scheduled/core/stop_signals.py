"""SIGINT and SIGTERM turned into a stop request made by a thread of its own, never by the signal handler.

Python runs a signal handler in the main thread between two bytecodes, wherever that thread is: possibly inside
``threading.Event.wait`` holding the event's lock, or inside a log call holding the buffered stderr. A handler that
sets that event (``request_stop``) or logs would wait on a lock its own thread holds, forever, and the process would
never stop. The handler here only puts the signal on a ``queue.SimpleQueue``, whose ``put`` is reentrant; a thread
waiting on that queue does the rest.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignals:
    """While installed, SIGINT and SIGTERM call ``on_signal(signum)`` in a thread of their own.

    ``install`` only in the main thread (``signal.signal`` refuses any other); ``uninstall`` puts back the handlers it
    replaced and ends the thread.
    """

    def __init__(self, on_signal: Callable[[int], object], name: str = 'drqs-signals') -> None:
        self.on_signal = on_signal
        self.name = name
        self._received: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        # The handlers first: outside the main thread they raise, and no thread is left waiting. A signal caught
        # before the thread starts waits in the queue.
        self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        threading.Thread(target=self._serve, name=self.name, daemon=True).start()

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        self._received.put(None)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._received.put(signum)

    def _serve(self) -> None:
        while (signum := self._received.get()) is not None:
            try:
                self.on_signal(signum)
            except Exception:  # the next signal must still be heard
                logger.exception('Stopping on %s failed', signal.Signals(signum).name)
