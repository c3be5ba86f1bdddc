"""Settings of the example project: a real Django site that shows django_rq_scheduled with the admin.

For a demo only (DEBUG on, a published secret key). Two environment variables:

- ``DEMO_REDIS_URL``: the Redis of both RQ queues (default ``redis://127.0.0.1:6379/0``); ``scripts/demo.py``
  sets it to the Redis it starts.
- ``DEMO_DB``: the SQLite file (default ``db.sqlite3`` next to ``manage.py``).
"""

import os
from pathlib import Path

import django

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = 'django-insecure-example-project-only'
DEBUG = True
ALLOWED_HOSTS = ['127.0.0.1', 'localhost', '[::1]']

INSTALLED_APPS = [
    'django.contrib.admin',
    'django.contrib.auth',
    'django.contrib.contenttypes',
    'django.contrib.sessions',
    'django.contrib.messages',
    'django.contrib.staticfiles',
    'django_rq_scheduled',  # before 'django_rq', so that `manage.py rqscheduler` is this app's
    'django_rq',
    'demo',
]

MIDDLEWARE = [
    'django.middleware.security.SecurityMiddleware',
    'django.contrib.sessions.middleware.SessionMiddleware',
    'django.middleware.common.CommonMiddleware',
    'django.middleware.csrf.CsrfViewMiddleware',
    'django.contrib.auth.middleware.AuthenticationMiddleware',
    'django.contrib.messages.middleware.MessageMiddleware',
    'django.middleware.clickjacking.XFrameOptionsMiddleware',
]

ROOT_URLCONF = 'example_project.urls'
WSGI_APPLICATION = 'example_project.wsgi.application'

TEMPLATES = [
    {
        'BACKEND': 'django.template.backends.django.DjangoTemplates',
        'DIRS': [],
        'APP_DIRS': True,
        'OPTIONS': {
            'context_processors': [
                'django.template.context_processors.request',
                'django.contrib.auth.context_processors.auth',
                'django.contrib.messages.context_processors.messages',
            ],
        },
    },
]

# The web server, the scheduler and the worker all write to this file: wait for locks instead of failing.
_SQLITE_OPTIONS: dict = {'timeout': 20}
if django.VERSION >= (5, 1):
    _SQLITE_OPTIONS.update(transaction_mode='IMMEDIATE', init_command='PRAGMA journal_mode=WAL;')
DATABASES = {
    'default': {
        'ENGINE': 'django.db.backends.sqlite3',
        'NAME': os.environ.get('DEMO_DB') or BASE_DIR / 'db.sqlite3',
        'OPTIONS': _SQLITE_OPTIONS,
    }
}
DEFAULT_AUTO_FIELD = 'django.db.models.BigAutoField'

LANGUAGE_CODE = 'en-us'
TIME_ZONE = 'Europe/Paris'
USE_I18N = True
USE_TZ = True

STATIC_URL = 'static/'

REDIS_URL = os.environ.get('DEMO_REDIS_URL', 'redis://127.0.0.1:6379/0')
RQ_QUEUES = {
    'default': {'URL': REDIS_URL, 'DEFAULT_TIMEOUT': 360},
    'high': {'URL': REDIS_URL, 'DEFAULT_TIMEOUT': 360},
}

RQ_SCHEDULED = {
    'ALLOWED_CALLABLES': ['demo.tasks.*'],  # the admin may only schedule these functions
    'RECONCILE_INTERVAL': 30,
}
