"""The Sphinx docs build without a single warning (broken references and autodoc errors fail the suite)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_docs_build_without_warnings(tmp_path):
    result = subprocess.run(
        [sys.executable, '-m', 'sphinx', '-W', '-q', '-b', 'html', str(ROOT / 'docs'), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_renders_without_errors():
    import docutils.core

    source = (ROOT / 'README.rst').read_text()
    docutils.core.publish_string(source, writer='null', settings_overrides={'halt_level': 2, 'report_level': 2})


def test_every_test_the_docs_name_exists():
    """A guarantee names the test that proves it: the name must not outlive the test."""
    import re

    root = Path(__file__).resolve().parent.parent
    texts = [path.read_text() for path in [*sorted((root / 'docs').glob('*.rst')), root / 'README.rst']]
    # Names may be cut across lines in the docs' prose: "tests/x.py::\n    test_name".
    named = set(re.findall(r'``(tests/[\w/]+\.py)(?:::\s*(\w+))?``', '\n'.join(texts)))
    assert len(named) > 20
    missing = []
    for path, test in sorted(named):
        source = root / path
        if not source.exists() or (test and f'def {test}(' not in source.read_text()):
            missing.append(f'{path}::{test}' if test else path)
    assert missing == []
