"""System checks added with the models: queues, ALLOWED_CALLABLES, django_rq, deploy warnings."""

from __future__ import annotations

import pytest
from django.core.checks import run_checks
from django.test import override_settings


def our_checks(**kwargs):
    return [m.id for m in run_checks(**kwargs) if m.id.startswith('django_rq_scheduled.')]


def test_a_clean_configuration_passes():
    assert our_checks() == []


def test_default_queue_missing_from_rq_queues():
    with override_settings(RQ_QUEUES={'high': {'URL': 'redis://127.0.0.1:1/0'}}):
        assert our_checks() == ['django_rq_scheduled.W002']


def test_django_rq_missing():
    apps = ['django.contrib.contenttypes', 'django.contrib.auth', 'django_rq_scheduled']
    with override_settings(INSTALLED_APPS=apps):
        assert 'django_rq_scheduled.E003' in our_checks()


@pytest.mark.parametrize('value', ['myapp.*', [''], [1], {'a': 1}])
def test_malformed_allowed_callables(value):
    with override_settings(RQ_SCHEDULED={'ALLOWED_CALLABLES': value}):
        assert our_checks() == ['django_rq_scheduled.E002']


@pytest.mark.parametrize(
    'value',
    [
        {'RECONCILE_INTERVAL': 0},
        {'DEFAULT_MISFIRE_GRACE': -1},
        {'DEFAULT_MISFIRE_GRACE': 1.5},
        {'RECONCILE_SWEEP_ROWS': 0},
        {'RECONCILE_SWEEP_ROWS': 100_001},
        {'RECONCILE_SWEEP_ROWS': True},
        {'RECONCILE_SWEEP_ROWS': '1000'},
    ],
)
def test_bad_reconcile_interval_sweep_and_grace(value):
    with override_settings(RQ_SCHEDULED=value):
        assert our_checks() == ['django_rq_scheduled.E002']


def test_a_malformed_sweep_size_falls_back_to_its_default():
    from django_rq_scheduled.conf import reconcile_sweep_rows

    for value, rows in (('1000', 1000), (-5, 1000), (5000, 5000)):
        with override_settings(RQ_SCHEDULED={'RECONCILE_SWEEP_ROWS': value}):
            assert reconcile_sweep_rows() == rows


def test_deploy_check_wants_an_allow_list():
    assert 'django_rq_scheduled.W003' in our_checks(include_deployment_checks=True)
    with override_settings(RQ_SCHEDULED={'ALLOWED_CALLABLES': ['tests.tasks.*']}):
        assert 'django_rq_scheduled.W003' not in our_checks(include_deployment_checks=True)
