"""The job class of RQ workers that run Django Tasks and plain jobs alike: ``rqworker --job-class
django_rq_scheduled.task_job.Job``.

django-tasks-rq's own ``Job`` runs Tasks only: on its workers, a plain function (the bridge of ``task_calls``
included) fails with ``SuspiciousOperation``. This one runs a Task as django-tasks-rq does and anything else as RQ
does. It needs django-tasks-rq installed; nothing else imports this module.
"""

from __future__ import annotations

from typing import Any

from django_tasks_rq import Job as TaskJob
from rq.job import Job as RQJob

from .task_calls import is_task


class Job(TaskJob):
    @property
    def func(self) -> Any:
        return RQJob.func.fget(self)  # type: ignore[attr-defined]

    def perform(self) -> Any:
        return super().perform() if is_task(self.func) else RQJob.perform(self)

    def _execute(self) -> Any:
        return super()._execute() if is_task(self.func) else RQJob._execute(self)
