"""Pipelined commands whose replies are read later: the mover plans the next batch while Redis applies one."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis


class PendingReplies:
    """Commands written to one connection of the pool, their replies not read yet: the caller works meanwhile."""

    def __init__(
        self,
        pool: redis.ConnectionPool,
        commands: list[tuple[Any, ...]],
        *,
        packed: Iterable[bytes] | None = None,
        count: int | None = None,
    ) -> None:
        """Sends ``commands``; or, given ``packed`` (the bytes of ``count`` commands, from ``pack``), sends those
        bytes as they are, each as soon as it is produced."""
        self.pool = pool
        self.count = len(commands) if count is None else count
        self.connection = connection_of(pool)
        try:
            if packed is None:
                packed = self.connection.pack_commands(commands)
            self.connection.send_packed_command(packed)
        except BaseException:
            self.abandon()
            raise

    @classmethod
    def of_packed(cls, pool: redis.ConnectionPool, packed: Iterable[bytes], count: int) -> PendingReplies:
        """Sends ``count`` commands already packed (``pack``), one command in each item of ``packed``."""
        return cls(pool, [], packed=packed, count=count)

    def wait(self) -> list[Any]:
        """Every reply, in order; an error reply is returned as its exception, not raised."""
        replies: list[Any] = []
        try:
            for _ in range(self.count):
                try:
                    replies.append(self.connection.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            self.abandon()
            raise
        self.pool.release(self.connection)
        return replies

    def abandon(self) -> None:
        """Gives up on the replies (Redis still applies what it was sent): they may still be on their way, so the
        connection is closed, not reused."""
        self.connection.disconnect()
        self.pool.release(self.connection)


def connection_of(pool: redis.ConnectionPool) -> Any:
    try:
        return pool.get_connection()
    except TypeError:  # redis-py before 5.3 wants the command name
        return pool.get_connection('EVALSHA')  # type: ignore[call-arg,unused-ignore]


def pack(pool: redis.ConnectionPool, commands: list[tuple[Any, ...]]) -> list[bytes]:
    """The bytes ``commands`` are sent as (packing costs about as much as applying the moves takes Redis)."""
    connection = connection_of(pool)
    try:
        return list(connection.pack_commands(commands))
    finally:
        pool.release(connection)
