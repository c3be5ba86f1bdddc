"""``manage.py demo_setup``: the admin user, the sample schedules and a one-off run a minute from now.

Safe to run at every start: the user and the schedules are only created when missing, so edits made in the admin
are kept. Redis must be up: saved schedules are written to Redis when the transaction commits.
"""

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.utils import timezone

from django_rq_scheduled.models import SCHEDULE_MODELS, ScheduledJob

USERNAME = PASSWORD = 'admin'
FIXTURE = 'sample_schedules'
ONE_OFF = 'One-off report, a minute after the demo started'


class Command(BaseCommand):
    help = 'Creates the admin user and the sample schedules when missing; schedules a one-off run in a minute.'

    def handle(self, *args: Any, **options: Any) -> None:
        self.create_admin_user()
        self.load_sample_schedules()
        self.schedule_one_off()

    def create_admin_user(self) -> None:
        users = get_user_model().objects
        if users.filter(username=USERNAME).exists():
            self.stdout.write(f'Admin user {USERNAME!r} exists.')
            return
        users.create_superuser(USERNAME, 'admin@example.com', PASSWORD)
        self.stdout.write(f'Created the admin user {USERNAME!r} (password {PASSWORD!r}).')

    def load_sample_schedules(self) -> None:
        existing = sum(model.objects.count() for model in SCHEDULE_MODELS)
        if existing:
            self.stdout.write(f'{existing} schedules in the database: the sample schedules are not loaded again.')
            return
        call_command('loaddata', FIXTURE, verbosity=0)
        loaded = sum(model.objects.count() for model in SCHEDULE_MODELS)
        self.stdout.write(f'Loaded {loaded} sample schedules ({FIXTURE}.json).')

    def schedule_one_off(self) -> None:
        when = timezone.now().replace(microsecond=0) + timedelta(minutes=1)
        ScheduledJob.objects.update_or_create(
            name=ONE_OFF,
            defaults={
                'callable': 'demo.tasks.slow_report',
                'kwargs': {'seconds': 1},
                'scheduled_time': when,
                'has_run': False,
            },
        )
        self.stdout.write(f'One-off job scheduled at {timezone.localtime(when):%H:%M:%S} ({ONE_OFF!r}).')
