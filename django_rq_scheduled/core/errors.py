"""What the core raises, and the Redis errors it tells apart: an outage is waited out, never a reason to give up
on a job."""

from __future__ import annotations

import redis


class LeadershipLost(Exception):
    """The lease is no longer ours: another scheduler process leads now."""


REDIS_UNREACHABLE_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
)
# Out of memory, or a replica after a failover: Redis refuses writes for a while. Waited out like an outage, never
# a reason to dead-letter a job.
REDIS_WRITES_REFUSED_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
)
REDIS_OUTAGE_ERRORS = REDIS_UNREACHABLE_ERRORS + REDIS_WRITES_REFUSED_ERRORS
