"""A private redis-server for the suite, on a free loopback port; fakeredis's TCP server where none is installed."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class RedisServer:
    """One redis-server process that a test can stop, kill, pause and restart on the same port."""

    backend = 'redis-server'
    worker_class = None

    def __init__(
        self, *, appendonly: bool = False, password: str | None = None, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix='drqs-redis-')
        self.appendonly = appendonly
        self.password = password
        self.extra_args = tuple(extra_args)  # e.g. ('--replicaof', '127.0.0.1', '6379')
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        credentials = f':{self.password}@' if self.password else ''
        return f'redis://{credentials}127.0.0.1:{self.port}/0'

    def start(self) -> RedisServer:
        command = [
            shutil.which('redis-server') or 'redis-server',
            '--port', str(self.port), '--bind', '127.0.0.1', '--dir', self.dir, '--save', '',
            '--appendonly', 'yes' if self.appendonly else 'no', '--appendfsync', 'always',
            *(['--requirepass', self.password] if self.password else []),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_until_ready()
        return self

    def wait_until_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, password=self.password, socket_timeout=1)
        while True:
            try:
                if client.ping():
                    return
            except (redis.ConnectionError, redis.exceptions.BusyLoadingError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            finally:
                client.connection_pool.disconnect()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def wipe(self) -> None:
        """Empties the data directory of a stopped server: its next start begins with no data at all."""
        shutil.rmtree(self.dir, ignore_errors=True)
        Path(self.dir).mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class FakeTcpRedisServer:
    """fakeredis's TCP server, used only when no redis-server binary exists."""

    backend = 'fakeredis TcpFakeServer'
    worker_class = 'scripts.fake_redis_server.FakeRedisWorker'

    def __init__(self, **_: object) -> None:
        self.port = free_port()
        self.server = None

    @property
    def url(self) -> str:
        return f'redis://127.0.0.1:{self.port}/0'

    def start(self) -> FakeTcpRedisServer:
        from scripts.fake_redis_server import start_fake_server

        self.server = start_fake_server(self.port)
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_server(**kwargs: object) -> RedisServer | FakeTcpRedisServer:
    if shutil.which('redis-server'):
        return RedisServer(**kwargs).start()  # type: ignore[arg-type]
    return FakeTcpRedisServer().start()


def has_redis_server() -> bool:
    return shutil.which('redis-server') is not None
