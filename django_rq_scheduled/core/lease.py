"""The leader lease: ``rq:scheduler_lock`` held with an owner token, renewed well before it expires, released only
by its owner. Every batch move checks the token inside its own Lua call, so a deposed leader cannot enqueue."""

from __future__ import annotations

import logging
import time
from uuid import uuid4

from redis import Redis

from . import keys, scripts
from .errors import LeadershipLost
from .observer import SILENT, Observer

logger = logging.getLogger(__name__)


class Lease:
    """The lease as one scheduler instance holds it (or not)."""

    def __init__(self, connection: Redis, name: str, ttl: float) -> None:
        self.connection = connection
        self.name = name
        self.ttl = ttl
        self.token = keys.lease_token(name, uuid4().hex)
        self.held = False
        self.terms = 0
        """Times this instance started holding the lease (a start, or a return after an outage or another leader)."""
        self.observer: Observer = SILENT
        self._renewed_at = 0.0
        self._renew_script = connection.register_script(scripts.RENEW_LEASE)
        self._release_script = connection.register_script(scripts.RELEASE_LEASE)

    @property
    def ms(self) -> int:
        return max(1, round(self.ttl * 1000))

    def acquire(self) -> bool:
        """Takes the lease if it is free (True), or renews it if it is ours; ``held`` says whether we hold it."""
        was_held = self.held
        taken = bool(self.connection.set(keys.LOCK_KEY, self.token, nx=True, px=self.ms))
        self.held = taken or bool(self._renew_script(keys=[keys.LOCK_KEY], args=[self.token, self.ms]))
        if self.held:
            self._renewed_at = time.monotonic()
            if not taken:
                self.observer.lease_renewed()
            if not was_held:
                self.terms += 1
        return taken

    def release(self) -> bool:
        """Releases the lease if, and only if, we still hold it."""
        released = self._release_script(keys=[keys.LOCK_KEY], args=[self.token])
        self.held = False
        return bool(released)

    def renew_if_due(self) -> None:
        """Renews the lease once a third of its lifetime has passed; LeadershipLost if it is gone."""
        if time.monotonic() - self._renewed_at < self.ttl / 3:
            return
        if self._renew_script(keys=[keys.LOCK_KEY], args=[self.token, self.ms]):
            self._renewed_at = time.monotonic()
            self.observer.lease_renewed()
        else:
            self.lose('the lease expired before it could be renewed')
            raise LeadershipLost('lease expired')

    def still_ours(self) -> bool:
        """Renews the lease if due; False (and no longer held) if it is gone."""
        try:
            self.renew_if_due()
        except LeadershipLost:
            return False
        return True

    def lose(self, why: str) -> None:
        if self.held:
            logger.warning('Scheduler %s is no longer the leader: %s', self.name, why)
        self.held = False
