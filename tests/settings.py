"""Minimal Django settings for the test suite.

Redis URLs come from ``DRQS_TEST_REDIS_URL`` (set by tests/conftest.py for the processes it starts) and are
pointed at the suite's own redis-server by the ``redis_url`` fixture.
"""

import os

SECRET_KEY = 'tests-only'
DEBUG = False
USE_TZ = True
TIME_ZONE = 'UTC'

INSTALLED_APPS = [
    'django.contrib.contenttypes',
    'django.contrib.auth',
    'django_rq_scheduled',
    'django_rq',
]

DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': os.environ.get('DRQS_TEST_DB', ':memory:')}}

_REDIS_URL = os.environ.get('DRQS_TEST_REDIS_URL', 'redis://127.0.0.1:1/0')
RQ_QUEUES = {
    'default': {'URL': _REDIS_URL},
    'high': {'URL': _REDIS_URL},
}

RQ_SCHEDULED: dict = {}

LOGGING_CONFIG = None
