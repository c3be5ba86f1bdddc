"""Redis key names, job id formats and markers: one place for each, read by the core, sync, the admin and the Lua
scripts (``scripts`` formats the markers it tests into its source).

The first four names are rq-scheduler 0.14's, so that both programs read the same schedule and never lead at once.
Everything this project adds lives under ``rq:drqs:``.
"""

from __future__ import annotations

import re

SCHEDULED_JOBS_KEY = 'rq:scheduler:scheduled_jobs'
LOCK_KEY = 'rq:scheduler_lock'
LEASE_TOKEN_PREFIX = 'drqs|'
INSTANCE_KEY_PREFIX = 'rq:scheduler_instance:'
JOB_KEY_PREFIX = 'rq:job:'
QUEUES_SET_KEY = 'rq:queues'
"""RQ's set of queue keys: a move adds the queue it pushes to, as RQ's own enqueue does."""
RQ_QUEUE_PREFIX = 'rq:queue:'
RQ_SCHEDULED_REGISTRY_PREFIX = 'rq:scheduled:'
"""RQ's ``ScheduledJobRegistry`` of a queue (by name): where a retry with a delay waits."""
RQ_SCHEDULER_LOCK_PREFIX = 'rq:scheduler-lock:'
"""RQ's own scheduler holds a queue by this lock (``rq.scheduler.SCHEDULER_LOCKING_KEY_TEMPLATE``)."""

WAKEUP_KEY = 'rq:drqs:wakeup'
NEXT_WAKEUP_KEY = 'rq:drqs:next_wakeup'
DEAD_LETTERS_KEY = 'rq:drqs:dead_letters'
PAUSED_KEY = 'rq:drqs:paused'
"""The pause of this Redis server (``core.pause``): a hash of scope → JSON record (who, when, why)."""
PAUSE_ALL = '*'
"""The scope (a field of ``PAUSED_KEY``) of a pause of every queue; any other field is one queue's name."""
WAKEUP_KEYS = (SCHEDULED_JOBS_KEY, NEXT_WAKEUP_KEY, WAKEUP_KEY)
"""The keys of a write that may wake a sleeping leader (``scripts.SCHEDULE`` and others): schedule, wake-ups."""
INSTANCES_KEY = 'rq:drqs:instances'
LEADER_BEAT_KEY = 'rq:drqs:leader_beat'
"""Seconds between the heartbeats of the last scheduler that took the lead, at most (its ticks' longest sleep)."""
RUNS_KEY = 'rq:drqs:runs'
"""The loop's record of each occurrence it decided on (enqueued or skipped), read into rows by the leader."""
OUTCOMES_KEY = 'rq:drqs:outcomes'
"""The workers' record of each run's end (``capture``), read into ``Run`` rows by the leader."""
BUFFERED_KEY = 'rq:drqs:buffered'
"""Template id → the id of the run its buffered occurrence waits for (overlap ``buffer_one``), or that id behind
``RUN_ENDED_PREFIX`` once the run's worker reported its end (before RQ writes the run's final status)."""
RUN_ENDED_PREFIX = 'ended:'
PUBSUB_CHANNEL_PREFIX = 'rq:pubsub:'
"""RQ's channel of commands to one worker (``rq.command.PUBSUB_CHANNEL_TEMPLATE``): + the worker's name."""
VERSIONS_KEY = 'rq:drqs:versions'
"""Template id → definition digest of the row that owns it (a done marker once it has run its last run)."""
DONE_PREFIX = 'done:'
RECONCILE_KEY = 'rq:drqs:reconcile'
"""The leader's reconciliation state on this server (``reconciliation``): the epoch of the full pass it follows, the
watermark of changed rows, and the cursors of the rolling sweep. Missing (a flush, a new or empty server): the next
pass is a full one."""
TEMPLATE_PREFIX = 'drqs-'
FAST_MARK_FIELD = 'drqs_mark'
"""A field of the job hash of a plain one-off written by our API: the MAC the move script checks (``fast_moves``)."""
ROW_MARK_FIELD = 'drqs_row_mark'
"""A field of a row's one-off template written by the sync: the MAC the move script checks (``fast_rows``)."""

META_KEY = 'django_rq_scheduled'
"""The one key of ``job.meta`` that holds this project's own data (rq-scheduler ignores unknown meta)."""
SCHEDULING_META_KEYS = ('interval', 'cron_string', 'repeat', 'use_local_timezone', META_KEY)
"""The meta keys that make a job periodic (rq-scheduler's and ours): a run of a template does not inherit them."""

CHAINED_CALLBACKS_META_KEY = 'django_rq_scheduled_chain'
"""A meta key of a template and of its runs: the dotted paths of RQ callbacks that ``capture`` calls after
recording an outcome (``{'on_success': path, 'on_failure': path}``), for jobs that need callbacks of their own (a
Django Task's backend). Outside ``META_KEY``, so every run of the template inherits it."""

JOB_ID_PATTERN = re.compile(r'[A-Za-z0-9_-]+')


def lease_token(name: str, nonce: str) -> str:
    """The value a leader of ours keeps in the lock: its name, and a nonce unique to the process."""
    return f'{LEASE_TOKEN_PREFIX}{name}|{nonce}'


def lease_holder(lock_value: str) -> str | None:
    """The name of the scheduler of ours holding the lock, or None (rq-scheduler's lock holds a bare timestamp).

    The name itself may hold '|'; the nonce never does.
    """
    if not lock_value.startswith(LEASE_TOKEN_PREFIX):
        return None
    return lock_value.removeprefix(LEASE_TOKEN_PREFIX).rsplit('|', 1)[0]


def instance_key(name: str) -> str:
    return INSTANCE_KEY_PREFIX + name


def job_key(job_id: str | bytes) -> str | bytes:
    """The hash of a job; a member that is not UTF-8 keeps its bytes."""
    if isinstance(job_id, bytes):
        return JOB_KEY_PREFIX.encode() + job_id
    return JOB_KEY_PREFIX + job_id


def occurrence_id(template_id: str, fire_ms: int) -> str:
    """The id of the RQ job enqueued for one occurrence of a periodic template.

    Deterministic (template id + fire time in epoch milliseconds), so every occurrence has one id, and valid
    under RQ's ``[A-Za-z0-9_-]+`` rule.
    """
    return f'{template_id}_at_{fire_ms}'


def template_id(model_name: str, pk: object) -> str:
    """The id of the template a database row keeps in the schedule."""
    return f'{TEMPLATE_PREFIX}{model_name}-{pk}'


def template_owner(job_id: str) -> tuple[str, str] | None:
    """``(model name, primary key)`` of a row's template id, or None for any other job id."""
    if not job_id.startswith(TEMPLATE_PREFIX):
        return None
    model_name, _, pk = job_id.removeprefix(TEMPLATE_PREFIX).rpartition('-')
    return (model_name, pk) if model_name and pk else None


ROWS_APP_LABEL = 'django_rq_scheduled'
"""The app label of the schedule models, whose rows' owner ids a compact template leaves out (``compact``)."""


def owner_id(model_label: str, pk: object) -> str:
    """What a row's template and run records carry to name it: ``<app label>.<model name>:<primary key>``."""
    return f'{model_label}:{pk}'


def parse_owner(owner: str) -> tuple[str, str]:
    """``(model label, primary key)`` of an owner id."""
    label, _, pk = owner.rpartition(':')
    return label, pk


def done_marker(version: str, runs: int) -> str:
    """What the versions hash holds for a schedule that ran its last run: its digest and how many runs it made."""
    return f'{DONE_PREFIX}{version}:{runs}'


def parse_done(stored: str | None) -> tuple[str, int | None] | None:
    """``(digest, runs)`` of a done marker (runs None in the marker of older versions), None if not one."""
    if not stored or not stored.startswith(DONE_PREFIX):
        return None
    digest, _, runs = stored.removeprefix(DONE_PREFIX).partition(':')
    return digest, int(runs) if runs.isdigit() else None


def manual_run_id(template_id: str, at_ms: int) -> str:
    """The id of an extra run of a schedule started by hand ("run now", ``enqueue_job`` before its time)."""
    return f'{template_id}_now_{at_ms}'


def run_origin(job_id: str) -> tuple[str, str, int | None] | None:
    """``(template id, trigger, fire time in ms or None)`` of the job of a schedule row's run, None for other ids.

    The trigger is 'schedule' (an occurrence, or a one-off whose job is its template) or 'manual' (run by hand).
    """
    for separator, trigger in (('_at_', 'schedule'), ('_now_', 'manual')):
        template, found, stamp = job_id.rpartition(separator)
        if found and stamp.isdigit() and template_owner(template):
            return template, trigger, int(stamp) if trigger == 'schedule' else None
    return (job_id, 'schedule', None) if template_owner(job_id) else None


def is_job_id(value: object) -> bool:
    """Whether ``value`` is a valid RQ job id (RQ refuses others)."""
    return isinstance(value, str) and JOB_ID_PATTERN.fullmatch(value) is not None


def validate_job_id(job_id: object, argument: str = 'id') -> str:
    if not isinstance(job_id, str) or not is_job_id(job_id):
        raise ValueError(
            f'{argument}: job ids may only contain letters, digits, underscores and dashes, got {job_id!r}'
        )
    return job_id
