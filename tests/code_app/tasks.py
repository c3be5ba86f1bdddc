"""Schedules declared with the decorators, found by the sync in this app's ``tasks`` module."""

from django_rq_scheduled import cron, every


@every(minutes=5, queue='high', kwargs={'to': 'ops'})
def send_digest(to: str = '') -> str:
    return f'digest to {to}'


@cron('0 7 * * 1-5', timezone='Europe/Paris', name='weekday report')
def weekday_report() -> str:
    return 'report'
