"""A TLS-only, password-protected Redis: the scheduler schedules and moves jobs over ``rediss://``, logs no secret."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
import redis

from django_rq_scheduled import Scheduler
from tests import tasks
from tests.redis_server import RedisServer, TlsFiles

pytestmark = [pytest.mark.integration]

UTC = timezone.utc
PASSWORD = 'tls-s3cret-pw'
TOOLS = ('openssl', 'redis-server')


def require_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if not missing:
        return
    message = f'needs {" and ".join(missing)} on PATH'
    if os.environ.get('CI'):
        pytest.fail(message)
    pytest.skip(message)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(['openssl', *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(directory: Path) -> TlsFiles:
    """A throwaway CA and a server certificate it signed, valid for 127.0.0.1 and localhost."""
    openssl(
        'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=drqs test CA',
        '-keyout', 'ca.key', '-out', 'ca.crt',
        '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
        cwd=directory,
    )  # fmt: skip
    openssl(
        'req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', 'server.key',
        '-out', 'server.csr',
        cwd=directory,
    )  # fmt: skip
    (directory / 'server.ext').write_text(
        'subjectAltName=IP:127.0.0.1,DNS:localhost\n'
        'basicConstraints=critical,CA:FALSE\n'
        'keyUsage=critical,digitalSignature,keyEncipherment\n'
        'extendedKeyUsage=serverAuth\n'
    )
    openssl(
        'x509', '-req', '-in', 'server.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial',
        '-days', '1', '-extfile', 'server.ext', '-out', 'server.crt',
        cwd=directory,
    )  # fmt: skip
    return TlsFiles(
        cert_file=str(directory / 'server.crt'),
        key_file=str(directory / 'server.key'),
        ca_file=str(directory / 'ca.crt'),
    )


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[RedisServer]:
    require_tools()
    server = RedisServer(password=PASSWORD, tls=make_certificates(tmp_path))
    try:
        server.start()
        yield server
    finally:
        server.close()


def test_the_plain_text_port_is_closed(tls_server: RedisServer) -> None:
    plain = redis.Redis(host='127.0.0.1', port=tls_server.port, password=PASSWORD, socket_timeout=2)
    try:
        with pytest.raises(redis.ConnectionError):
            plain.ping()
    finally:
        plain.connection_pool.disconnect()


@pytest.mark.parametrize('verify', ['ca-in-url', 'no-verification'])
def test_jobs_are_scheduled_and_moved_over_tls_without_logging_secrets(
    tls_server: RedisServer, settings: object, caplog: pytest.LogCaptureFixture, verify: str
) -> None:
    # django-rq 4.2 passes only URL, DB and SSL_CERT_REQS for a rediss:// URL; redis-py reads ssl_ca_certs from
    # the URL's query string.
    if verify == 'ca-in-url':
        url = f'{tls_server.url}?ssl_ca_certs={tls_server.tls.ca_file}'
        config = {'URL': url}
    else:
        url = tls_server.url
        config = {'URL': url, 'SSL_CERT_REQS': None}
    settings.RQ_QUEUES = {'default': config}  # type: ignore[attr-defined]
    caplog.set_level(logging.DEBUG)

    scheduler = Scheduler(queue_name='default')
    connection = scheduler.connection
    try:
        assert issubclass(connection.connection_pool.connection_class, redis.SSLConnection)
        assert connection.ping()
        scheduler.enqueue_at(datetime.now(UTC), tasks.add, 1, 2, job_id='over-tls')
        assert 'over-tls' in scheduler
        moved = scheduler.enqueue_jobs()
        assert [job.id for job in moved] == ['over-tls']
        assert connection.lrange('rq:queue:default', 0, -1) == [b'over-tls']
        assert 'over-tls' not in scheduler
    finally:
        connection.flushdb()
        connection.connection_pool.disconnect()

    logged = '\n'.join(
        [caplog.text] + [f'{record.getMessage()} {record.args!r} {record.exc_text or ""}' for record in caplog.records]
    )
    assert caplog.records, 'expected the scheduler to log at DEBUG'
    assert PASSWORD not in logged
    assert url not in logged
    assert tls_server.url not in logged


def test_an_unknown_ca_is_refused_when_verification_is_required(tls_server: RedisServer, settings: object) -> None:
    settings.RQ_QUEUES = {'default': {'URL': tls_server.url}}  # type: ignore[attr-defined]  # 'required', no CA
    scheduler = Scheduler(queue_name='default')
    try:
        with pytest.raises(redis.ConnectionError, match=r'(?i)certificate[ _]verify[ _]failed'):
            scheduler.connection.ping()
    finally:
        scheduler.connection.connection_pool.disconnect()
