"""The distributions: the wheel carries what the app needs at run time, and the sdist builds the same wheel."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def build(source: Path, outdir: Path, *kinds: str) -> list[Path]:
    command = [sys.executable, '-m', 'build', '--no-isolation', *kinds, '--outdir', str(outdir), str(source)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return sorted(outdir.iterdir())


def wheel_contents(wheel: Path) -> dict[str, str]:
    """Each file of the wheel with the digest of its content (RECORD lists the digests itself)."""
    with zipfile.ZipFile(wheel) as archive:
        return {
            name: hashlib.sha256(archive.read(name)).hexdigest()
            for name in archive.namelist()
            if not name.endswith('.dist-info/RECORD')
        }


@pytest.fixture(scope='module')
def distributions(tmp_path_factory):
    return build(ROOT, tmp_path_factory.mktemp('dist'), '--sdist', '--wheel')


def test_the_wheel_holds_templates_migrations_and_type_information(distributions):
    [wheel] = [path for path in distributions if path.suffix == '.whl']
    names = set(wheel_contents(wheel))
    for required in (
        'django_rq_scheduled/py.typed',
        'django_rq_scheduled/migrations/0001_initial.py',
        'django_rq_scheduled/templates/admin/django_rq_scheduled/status.html',
        'django_rq_scheduled/templates/admin/django_rq_scheduled/cancel.html',
        'django_rq_scheduled/management/commands/rqscheduler.py',
    ):
        assert required in names, required
    assert any(name.endswith('.dist-info/licenses/LICENSE') for name in names)
    assert not any(name.startswith('tests/') for name in names)
    metadata = next(name for name in names if name.endswith('.dist-info/METADATA'))
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(metadata).decode()
    assert 'License-Expression: MIT' in text and 'Requires-Dist: redis[hiredis]>=4.6' in text


def test_the_sdist_builds_the_same_wheel(distributions, tmp_path):
    [sdist] = [path for path in distributions if path.name.endswith('.tar.gz')]
    [wheel] = [path for path in distributions if path.suffix == '.whl']
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path / 'unpacked', filter='data')
    [source] = (tmp_path / 'unpacked').iterdir()
    assert (source / 'LICENSE').exists() and (source / 'tests' / 'conftest.py').exists()
    [rebuilt] = build(source, tmp_path / 'rebuilt', '--wheel')
    assert wheel_contents(rebuilt) == wheel_contents(wheel)


def test_twine_accepts_both(distributions):
    subprocess.run([sys.executable, '-m', 'twine', 'check', '--strict', *map(str, distributions)], check=True)
