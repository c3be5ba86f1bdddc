from django.db import models
from django.utils import timezone


class TaskRun(models.Model):
    """One run of a demo task, written by the task itself: proof in the admin that the schedules run."""

    task = models.CharField(max_length=64)
    ran_at = models.DateTimeField(default=timezone.now, db_index=True)
    message = models.CharField(max_length=255, blank=True)
    job_id = models.CharField('RQ job id', max_length=255, blank=True)

    class Meta:
        ordering = ['-ran_at']

    def __str__(self) -> str:
        return f'{self.task} at {self.ran_at:%H:%M:%S}'
