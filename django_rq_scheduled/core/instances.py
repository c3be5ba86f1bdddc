"""The instance registry: each running scheduler's entry (birth, death, heartbeat, role), for people to read.

``rq:scheduler_instance:<name>`` is rq-scheduler's hash, with an expiry refreshed by the heartbeat, so that a
crashed process leaves nothing behind that would keep its name taken; ``rq:drqs:instances`` lists the live ones.
"""

from __future__ import annotations

import os
import socket

from redis import Redis
from redis.typing import EncodableT, FieldT

from . import keys
from .clock import ServerClock

DEATH_TTL = 60
"""Seconds an instance's entry stays after its death, for the status page."""


class Instances:
    """The entry of one scheduler instance."""

    def __init__(self, connection: Redis, name: str, clock: ServerClock, ttl: int) -> None:
        self.connection = connection
        self.name = name
        self.clock = clock
        self.ttl = ttl
        self.key = keys.instance_key(name)
        self.registered = False

    def register_birth(self) -> None:
        """Registers this instance; ValueError if a live instance already has this name."""
        birth, death = self.connection.hmget(self.key, ['birth', 'death'])
        if birth is not None and death is None:
            raise ValueError(f"There's already an active RQ scheduler named: {self.name!r}")
        now = self.clock.now()
        info: dict[FieldT, EncodableT] = {
            'birth': now,
            'hostname': socket.gethostname(),
            'pid': os.getpid(),
            'last_heartbeat': now,
        }
        with self.connection.pipeline() as pipe:
            pipe.delete(self.key)
            pipe.hset(self.key, mapping=info)
            pipe.expire(self.key, self.ttl)
            pipe.zadd(keys.INSTANCES_KEY, {self.name: now})
            pipe.execute()
        self.registered = True

    def register_death(self) -> None:
        self.registered = False
        with self.connection.pipeline() as pipe:
            pipe.hset(self.key, 'death', self.clock.now())
            pipe.expire(self.key, DEATH_TTL)
            pipe.zrem(keys.INSTANCES_KEY, self.name)
            pipe.execute()

    def heartbeat(self, role: str) -> None:
        now = self.clock.now()
        with self.connection.pipeline() as pipe:
            pipe.hset(self.key, mapping={'last_heartbeat': now, 'role': role})
            pipe.expire(self.key, self.ttl)
            pipe.zadd(keys.INSTANCES_KEY, {self.name: now})
            pipe.zremrangebyscore(keys.INSTANCES_KEY, '-inf', now - self.ttl)
            pipe.execute()

    def record_leadership(self, beat_period: float) -> None:
        # Only a registered instance (one running the loop) has an entry to add this to; an expiring one, so that a
        # crash leaves nothing behind that would keep its name taken.
        if not self.registered:
            return
        with self.connection.pipeline() as pipe:
            pipe.hset(self.key, 'leader_since', self.clock.now())
            pipe.expire(self.key, self.ttl)
            pipe.set(keys.LEADER_BEAT_KEY, beat_period)
            pipe.execute()
