"""A throwaway PostgreSQL cluster for the suite: a fresh data directory in a temporary folder, served on a free
loopback port with a random password, and deleted when closed.

initdb refuses to run as root, so as root the cluster belongs to the ``postgres`` system user (Debian's
``postgresql`` package creates it). The binaries are found on PATH, in ``DRQS_TEST_PG_BINDIR``, or where Debian
installs them (/usr/lib/postgresql/<version>/bin, the newest first).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.redis_server import free_port

DEBIAN_BINDIRS = '/usr/lib/postgresql/*/bin'
CLUSTER_USER = 'postgres'
DATABASE = 'drqs'
# A throwaway cluster need not survive a crash: no fsync makes the suite's many small commits cheap.
SPEED_OVER_DURABILITY = ('fsync=off', 'synchronous_commit=off', 'full_page_writes=off')


def find_bindir() -> Path | None:
    """The folder of initdb and pg_ctl, or None when PostgreSQL is not installed."""
    configured = os.environ.get('DRQS_TEST_PG_BINDIR')
    if configured:
        return Path(configured) if (Path(configured) / 'initdb').exists() else None
    on_path = shutil.which('initdb')
    if on_path:
        return Path(on_path).parent
    installed = sorted(Path('/').glob(DEBIAN_BINDIRS.lstrip('/')), key=_version, reverse=True)
    return next((folder for folder in installed if (folder / 'initdb').exists()), None)


def _version(bindir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in bindir.parent.name.split('.') if part.isdigit())


class PostgresServer:
    """One postgres process on 127.0.0.1; ``url`` names a database the suite may create and drop."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.dir = Path(tempfile.mkdtemp(prefix='drqs-postgres-'))
        self.data = self.dir / 'data'
        self.started = False

    @property
    def url(self) -> str:
        return f'postgresql://{CLUSTER_USER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}'

    def start(self) -> PostgresServer:
        password_file = self.dir / 'password'
        password_file.write_text(self.password)
        self._hand_over_to_cluster_user()
        self._run(
            'initdb', '-D', str(self.data), '-U', CLUSTER_USER, f'--pwfile={password_file}',
            '--auth=scram-sha-256', '--encoding=UTF8', '--no-locale', '--no-sync',
        )  # fmt: skip
        password_file.unlink()
        settings = [
            f'-p {self.port}', "-c listen_addresses='127.0.0.1'", f"-c unix_socket_directories='{self.dir}'",
            *(f'-c {setting}' for setting in SPEED_OVER_DURABILITY),
        ]  # fmt: skip
        self._run('pg_ctl', '-D', str(self.data), '-l', str(self.dir / 'log'), '-w', '-o', ' '.join(settings), 'start')
        self.started = True
        return self

    def close(self) -> None:
        if self.started:
            self._run('pg_ctl', '-D', str(self.data), '-m', 'immediate', '-w', 'stop')
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        path = self.dir / 'log'
        return path.read_text(errors='replace') if path.exists() else ''

    def _hand_over_to_cluster_user(self) -> None:
        if os.geteuid() != 0:
            return
        owner = pwd.getpwnam(CLUSTER_USER)
        for path in (self.dir, *self.dir.iterdir()):
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if os.geteuid() == 0:
            command = ['runuser', '-u', CLUSTER_USER, '--', *command]
        result = subprocess.run(command, cwd=self.dir, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            output = result.stderr or result.stdout
            raise RuntimeError(f'{program} failed ({result.returncode}): {output}\n{self.log()}')


def start_postgres() -> PostgresServer:
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError('PostgreSQL is not installed: no initdb found')
    server = PostgresServer(bindir)
    try:
        return server.start()
    except BaseException:
        server.close()
        raise
