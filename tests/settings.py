"""Minimal Django settings for the test suite.

Redis URLs come from ``DRQS_TEST_REDIS_URL`` (set by tests/conftest.py for the processes it starts) and are
pointed at the suite's own redis-server by the ``redis_url`` fixture. The database is SQLite (``DRQS_TEST_DB``, in
memory by default), or PostgreSQL when ``DRQS_TEST_POSTGRES_URL`` is set, e.g.
``postgresql://user:password@127.0.0.1:5432/drqs`` (runtests.py sets it for its PostgreSQL pass; tests run in the
database ``test_<name>``, created and dropped by pytest-django).
"""

import json
import os
from urllib.parse import unquote, urlsplit

SECRET_KEY = 'tests-only'
DEBUG = False
USE_TZ = True
TIME_ZONE = 'UTC'

INSTALLED_APPS = [
    'django.contrib.admin',
    'django.contrib.auth',
    'django.contrib.contenttypes',
    'django.contrib.sessions',
    'django.contrib.messages',
    'django.contrib.staticfiles',
    'django_rq_scheduled',
    'django_rq',
]

MIDDLEWARE = [
    'django.contrib.sessions.middleware.SessionMiddleware',
    'django.middleware.common.CommonMiddleware',
    'django.middleware.csrf.CsrfViewMiddleware',
    'django.contrib.auth.middleware.AuthenticationMiddleware',
    'django.contrib.messages.middleware.MessageMiddleware',
]

ROOT_URLCONF = 'tests.urls'
STATIC_URL = '/static/'
ALLOWED_HOSTS = ['*']

TEMPLATES = [
    {
        'BACKEND': 'django.template.backends.django.DjangoTemplates',
        'APP_DIRS': True,
        'OPTIONS': {
            'context_processors': [
                'django.template.context_processors.request',
                'django.contrib.auth.context_processors.auth',
                'django.contrib.messages.context_processors.messages',
            ]
        },
    }
]

DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': os.environ.get('DRQS_TEST_DB', ':memory:')}}

_POSTGRES_URL = os.environ.get('DRQS_TEST_POSTGRES_URL')
if _POSTGRES_URL:
    _postgres = urlsplit(_POSTGRES_URL)
    DATABASES = {
        'default': {
            'ENGINE': 'django.db.backends.postgresql',
            'NAME': _postgres.path.lstrip('/') or 'drqs',
            'USER': unquote(_postgres.username or ''),
            'PASSWORD': unquote(_postgres.password or ''),
            'HOST': _postgres.hostname or '127.0.0.1',
            'PORT': str(_postgres.port or 5432),
        }
    }

_REDIS_URL = os.environ.get('DRQS_TEST_REDIS_URL', 'redis://127.0.0.1:1/0')
RQ_QUEUES = {
    'default': {'URL': _REDIS_URL},
    # Another server (or database) for 'high' makes the processes serve two, one loop each.
    'high': {'URL': os.environ.get('DRQS_TEST_HIGH_REDIS_URL', _REDIS_URL)},
}

# A Sentinel-managed Redis instead of the URL, e.g. DRQS_TEST_SENTINELS='127.0.0.1:26379,127.0.0.1:26380'.
_SENTINELS = os.environ.get('DRQS_TEST_SENTINELS')
if _SENTINELS:
    _SENTINEL_ADDRESSES = [
        (host, int(port)) for host, _, port in (a.strip().rpartition(':') for a in _SENTINELS.split(','))
    ]
    RQ_QUEUES = {
        name: {
            'SENTINELS': _SENTINEL_ADDRESSES,
            'MASTER_NAME': os.environ.get('DRQS_TEST_SENTINEL_MASTER', 'mymaster'),
            'DB': 0,
            'SOCKET_TIMEOUT': 5,
            'SENTINEL_KWARGS': {'socket_timeout': 1},
        }
        for name in ('default', 'high')
    }

RQ_SCHEDULED: dict = {}
if os.environ.get('DRQS_TEST_RECONCILE_INTERVAL'):
    RQ_SCHEDULED['RECONCILE_INTERVAL'] = float(os.environ['DRQS_TEST_RECONCILE_INTERVAL'])
if os.environ.get('DRQS_TEST_ALERTS'):
    RQ_SCHEDULED['ALERTS'] = json.loads(os.environ['DRQS_TEST_ALERTS'])
if os.environ.get('DRQS_TEST_SCHEDULES'):
    RQ_SCHEDULED['SCHEDULES'] = json.loads(os.environ['DRQS_TEST_SCHEDULES'])
if os.environ.get('DRQS_TEST_ALERT_AFTER_FAILURES'):
    RQ_SCHEDULED['ALERT_AFTER_FAILURES'] = int(os.environ['DRQS_TEST_ALERT_AFTER_FAILURES'])

LOGGING_CONFIG = None

# Django Tasks (tests/test_django_tasks.py): harmless when django-tasks is not installed, read only by its backends.
TASKS = {
    'default': {'BACKEND': 'django_tasks_rq.RQBackend', 'QUEUES': ['default', 'high']},
    'immediate': {'BACKEND': 'django_tasks.backends.immediate.ImmediateBackend'},
    'dummy': {'BACKEND': 'django_tasks.backends.dummy.DummyBackend'},
}
