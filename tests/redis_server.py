"""A private redis-server for the suite, on a free loopback port; fakeredis's TCP server where none is installed."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS-only server: its certificate and key, and the CA that signed the certificate."""

    cert_file: str
    key_file: str
    ca_file: str


class RedisServer:
    """One redis-server process that a test can stop, kill, pause and restart on the same port."""

    backend = 'redis-server'
    worker_class = None

    def __init__(
        self,
        *,
        appendonly: bool = False,
        password: str | None = None,
        extra_args: tuple[str, ...] = (),
        tls: TlsFiles | None = None,
    ) -> None:
        self.port = free_port()  # with ``tls``, the TLS port: the plain-text port is then disabled
        self.tls = tls
        self.dir = tempfile.mkdtemp(prefix='drqs-redis-')
        self.appendonly = appendonly
        self.password = password
        self.extra_args = tuple(extra_args)  # e.g. ('--replicaof', '127.0.0.1', '6379')
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        credentials = f':{self.password}@' if self.password else ''
        scheme = 'rediss' if self.tls else 'redis'
        return f'{scheme}://{credentials}127.0.0.1:{self.port}/0'

    def start(self) -> RedisServer:
        ports = ['--port', str(self.port)]
        if self.tls:
            ports = [
                '--port', '0', '--tls-port', str(self.port), '--tls-cert-file', self.tls.cert_file,
                '--tls-key-file', self.tls.key_file, '--tls-ca-cert-file', self.tls.ca_file,
                '--tls-auth-clients', 'no',
            ]  # fmt: skip
        command = [
            shutil.which('redis-server') or 'redis-server',
            *ports, '--bind', '127.0.0.1', '--dir', self.dir, '--save', '',
            '--appendonly', 'yes' if self.appendonly else 'no', '--appendfsync', 'always',
            *(['--requirepass', self.password] if self.password else []),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_until_ready()
        return self

    def wait_until_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        tls = {'ssl': True, 'ssl_ca_certs': self.tls.ca_file} if self.tls else {}
        client = redis.Redis(port=self.port, password=self.password, socket_timeout=1, **tls)
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
