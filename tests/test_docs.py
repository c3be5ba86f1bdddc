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
