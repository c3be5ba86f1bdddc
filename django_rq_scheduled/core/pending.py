"""Pipelined commands whose replies are read later: the mover plans the next batch while Redis applies one."""

from __future__ import annotations

from typing import Any

import redis


class PendingReplies:
    """Commands written to one connection of the pool, their replies not read yet: the caller works meanwhile."""

    def __init__(self, pool: redis.ConnectionPool, commands: list[tuple[Any, ...]]) -> None:
        self.pool = pool
        self.count = len(commands)
        try:
            self.connection = pool.get_connection()
        except TypeError:  # redis-py before 5.3 wants the command name
            self.connection = pool.get_connection('EVALSHA')  # type: ignore[call-arg,unused-ignore]
        try:
            packed = self.connection.pack_commands(commands)  # type: ignore[no-untyped-call]
            self.connection.send_packed_command(packed)  # type: ignore[no-untyped-call]
        except BaseException:
            self._discard()
            raise

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
            self._discard()
            raise
        self.pool.release(self.connection)
        return replies

    def _discard(self) -> None:
        # Replies may still be on their way: the connection cannot be reused.
        self.connection.disconnect()  # type: ignore[no-untyped-call]
        self.pool.release(self.connection)
