"""Sphinx configuration for django-rq-scheduled."""

import os
import sys
from pathlib import Path

import django

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'docs' / '_ext'))
os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'tests.settings')
django.setup()

from django_rq_scheduled import __version__  # noqa: E402

project = 'django-rq-scheduled'
author = 'django-rq-scheduled developers'
copyright = '2026, django-rq-scheduled developers'
release = version = __version__

extensions = ['sphinx.ext.autodoc', 'sphinx.ext.napoleon', 'sphinx.ext.intersphinx', 'drqs_reference']
autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
intersphinx_mapping = {}
exclude_patterns = ['_build']
html_theme = 'furo'
html_title = f'django-rq-scheduled {release}'
html_static_path = ['_static']
nitpicky = False
