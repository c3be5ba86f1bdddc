"""fakeredis's TCP server made usable by RQ: for the demo and the test suite where no redis-server is installed.

fakeredis 2.40's ``TcpFakeServer`` closes a connection after any error reply, so redis-py's EVALSHA-then-SCRIPT
LOAD fallback never loads a script and the scheduler retries for ever; and it answers ``CLIENT INFO`` with an
address redis-py cannot parse, which crashes RQ's workers. Both are worked around here; real Redis needs neither.
"""

from __future__ import annotations

import threading
from typing import Any

import redis
from rq import Worker


def start_fake_server(port: int) -> Any:
    """A fakeredis TCP server on 127.0.0.1:port, serving in a daemon thread. Call ``shutdown()`` and
    ``server_close()`` to stop it."""
    from fakeredis import TcpFakeServer

    server = TcpFakeServer(('127.0.0.1', port), server_type='redis')
    server.daemon_threads = True  # a client blocked in BLPOP must not keep the process from exiting
    _keep_connections_open_after_errors(server)
    threading.Thread(target=server.serve_forever, name='fakeredis', daemon=True).start()
    return server


def _keep_connections_open_after_errors(server: Any) -> None:
    class Handler(server.RequestHandlerClass):  # type: ignore[name-defined]
        def setup(self) -> None:
            super().setup()
            read_response = self.current_client.read_response

            def read_response_or_error(*args: Any, **kwargs: Any) -> Any:
                try:
                    return read_response(*args, **kwargs)
                except redis.ResponseError as error:
                    return error  # written back as an error reply

            self.current_client.read_response = read_response_or_error

    server.RequestHandlerClass = Handler


class FakeRedisWorker(Worker):
    """RQ's worker, minus the crash on fakeredis's ``CLIENT INFO`` reply."""

    def _set_ip_address(self, connection: redis.Redis) -> None:
        try:
            super()._set_ip_address(connection)
        except ValueError:
            self.ip_address = 'unknown'
