"""Chaos soak: Redis, the scheduler processes and the users all misbehave at once, and every occurrence is checked.

``PYTHONPATH=. python -m bench.soak chaos [--minutes M] [--seed S]`` from the repository root. A private redis-server
with AOF (``appendfsync always``) and three ``rqscheduler`` processes sharing one SQLite database run a load phase of
M minutes, on a schedule of events drawn from the seed:

- rows created through the ORM: hundreds of one-off ``ScheduledJob`` rows due a few milliseconds to tens of seconds
  after they are created, ``RepeatableJob`` rows every 1 or 2 s and ``CronJob`` rows on a seconds field, with and
  without ``repeat``;
- users racing the loop: saves right around due times (a changed description, or nothing), saves of an instance
  loaded before the run happened, disabling and enabling (with ``disable()``/``enable()`` and with a save);
- faults: the leader killed -9 or paused (SIGSTOP) past its lease and resumed, a standby killed -9, Redis killed -9
  and restarted on its AOF; every killed process is replaced.

Then every periodic row is disabled, the loop drains, and bench/chaos_check.py checks what reached the queue and
what the database says against the rules in its docstring. The report is a markdown table of figures, then each
violation with its evidence (bench/chaos_evidence.py). Exit status 1 on any violation.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import math
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.db import connections

from bench.chaos_check import Observed, Rules, Schedule, check
from bench.chaos_evidence import explain
from django_rq_scheduled.core import keys
from django_rq_scheduled.core.errors import REDIS_OUTAGE_ERRORS
from django_rq_scheduled.models import CronJob, RepeatableJob, ScheduledJob
from tests.processes import OutputReader, scheduler_process, wait_for
from tests.processes_database import processes_database
from tests.redis_server import RedisServer

UTC = timezone.utc
QUEUE_KEY = 'rq:queue:default'
CRON_STEPS = (1, 2, 3)  # seconds; each divides 60, so a slot is an epoch second that the step divides
ALIGN = 6  # the load phase starts on a multiple of every step: the plan's slots do not depend on the start time
MODELS = {'once': ScheduledJob, 'interval': RepeatableJob, 'cron': CronJob}
# No automatic AOF rewrite: the incremental AOF then holds every write of the run, for the evidence.
AOF_ARGS = ('--aof-timestamp-enabled', 'yes', '--auto-aof-rewrite-percentage', '0')
LOOP_INTERVAL = '0.2'
COUNTING = threading.Lock()


@dataclass(frozen=True)
class Config:
    minutes: float = 10.0  # the load phase; setup and drain come on top
    seed: int = 1
    rate: float = 5.0  # one-off rows falling due per second
    periodic: int = 8  # periodic rows without repeat, created at the start
    repeat_every: float = 3.0  # seconds between two periodic rows with repeat
    edit_share: float = 0.35  # share of one-off rows that a user edits around their due time
    periodic_edit_every: float = 1.5  # mean seconds between two edits of periodic rows
    fault_every: float = 6.0  # mean seconds between two faults
    schedulers: int = 3
    lease_ttl: float = 1.0
    reconcile_interval: float = 3.0

    @property
    def load_seconds(self) -> float:
        return self.minutes * 60

    @property
    def settle(self) -> float:
        """Seconds within which Redis follows a row even when its sync failed: a reconciliation, by a new leader."""
        return self.reconcile_interval + self.lease_ttl + 2


# -- the plan ---------------------------------------------------------------------------------------------------


@dataclass(order=True)
class Action:
    at: float
    seq: int
    verb: str = field(compare=False)
    row: str | None = field(default=None, compare=False)
    change: bool = field(default=False, compare=False)  # saves: change the description (and so the digest)
    how: str = field(default='update', compare=False)  # enable/disable: 'update' (the queryset) or 'save'
    handle: str | None = field(default=None, compare=False)  # load / save_stale: the stale instance
    duration: float = field(default=0.0, compare=False)  # faults: until the process or Redis is back
    target: str | None = field(default=None, compare=False)  # restores: the paused process


FAULTS = ('kill-leader', 'pause-leader', 'kill-redis', 'kill-standby')
FAULT_WEIGHTS = (0.35, 0.25, 0.25, 0.15)


class Plan:
    """Everything the soak will do, drawn from the seed, at absolute times from ``t0``."""

    def __init__(self, config: Config, t0: float) -> None:
        self.config = config
        self.t0 = t0
        self.load_end = t0 + config.load_seconds
        self.rng = random.Random(config.seed)
        self.rows: dict[str, Schedule] = {}
        self.created_at: dict[str, float] = {}
        self.actions: list[Action] = []
        self._seq = itertools.count()
        self._periodic_rows()
        self._one_offs()
        self._periodic_edits()
        self._faults()
        self.actions.sort()

    def add(self, at: float, verb: str, **options: Any) -> Action:
        action = Action(round(at, 3), next(self._seq), verb, **options)
        self.actions.append(action)
        return action

    def _row(self, schedule: Schedule, at: float) -> None:
        self.rows[schedule.key] = schedule
        self.created_at[schedule.key] = at
        self.add(at, 'create', row=schedule.key)

    def _periodic_rows(self) -> None:
        rng, t0 = self.rng, self.t0
        for i in range(self.config.periodic):
            if i % 2:
                step = CRON_STEPS[(i // 2) % len(CRON_STEPS)]
                self._row(Schedule(f'cron-{i}', 'cron', cron=cron_string(step)), t0)
            else:
                self._row(Schedule(f'every-{i}', 'interval', start=t0 + 2, interval=1 + (i // 2) % 2), t0)
        at, i = t0 + 1, 0
        while at < self.load_end - 20:
            repeat = rng.randint(3, 8)
            if i % 2:
                step = rng.choice(CRON_STEPS[:2])
                self._row(Schedule(f'cron-repeat-{i}', 'cron', cron=cron_string(step), repeat=repeat), at)
            else:
                start = round(at + rng.uniform(0.5, 2.5), 3)
                interval = rng.choice((1, 2))
                self._row(Schedule(f'every-repeat-{i}', 'interval', start=start, interval=interval, repeat=repeat), at)
            at += rng.uniform(0.5, 1.5) * self.config.repeat_every
            i += 1

    def _one_offs(self) -> None:
        rng = self.rng
        count = round(self.config.rate * self.config.load_seconds)
        for i in range(count):
            due = round(rng.uniform(self.t0 + 2, self.load_end - 0.5), 3)
            kind = rng.random()
            ahead = rng.uniform(0.005, 0.1) if kind < 0.2 else rng.uniform(0.1, 2) if kind < 0.5 else rng.uniform(2, 30)
            created = max(self.t0 + rng.uniform(0, 1), due - ahead)
            self._row(Schedule(f'once-{i}', 'once', due=due), created)
            if rng.random() < self.config.edit_share:
                self._edit(f'once-{i}', due, created)

    def _edit(self, key: str, moment: float, created: float) -> None:
        """One user edit of a row around ``moment`` (a due time or a slot)."""
        rng = self.rng
        kind = rng.random()
        earliest = created + 0.01
        if kind < 0.35:
            self.add(max(earliest, moment + rng.uniform(-0.05, 0.25)), 'save', row=key, change=rng.random() < 0.6)
        elif kind < 0.7:
            handle = f'stale-{len(self.actions)}'
            loaded = max(earliest, moment - rng.uniform(0.1, 2))
            self.add(loaded, 'load', row=key, handle=handle)
            saved = max(loaded + 0.01, moment + rng.uniform(0.05, 2.5))
            self.add(saved, 'save_stale', row=key, handle=handle, change=rng.random() < 0.6)
        else:
            low = -10 if key.startswith('once') else -0.5
            off = min(self.load_end - 0.2, max(earliest, moment + rng.uniform(low, 0.5)))
            self.add(off, 'disable', row=key, how=rng.choice(('update', 'save')))
            if rng.random() < 0.8:
                on = min(self.load_end - 0.1, off + rng.uniform(0.3, 6))
                self.add(max(on, off + 0.05), 'enable', row=key, how=rng.choice(('update', 'save')))

    def _periodic_edits(self) -> None:
        rng = self.rng
        periodic = [key for key, row in self.rows.items() if row.periodic]
        at = self.t0 + 3
        while (at := at + rng.expovariate(1 / self.config.periodic_edit_every)) < self.load_end - 3:
            candidates = [key for key in periodic if self.created_at[key] < at - 1]
            key = rng.choice(candidates)
            slot = self._slots(key, at + rng.uniform(0, 3), at + 13)[0]
            self._edit(key, slot, self.created_at[key])
        for key in periodic:
            row = self.rows[key]
            slots = self._slots(key, self.created_at[key] + 0.05, self.load_end)
            if row.repeat and len(slots) >= row.repeat and rng.random() < 0.5:
                # A stale instance saved across the last run: it says fewer runs than Redis counted.
                last = slots[row.repeat - 1]
                handle = f'stale-last-{key}'
                self.add(last - rng.uniform(0.2, 1.0), 'load', row=key, handle=handle)
                self.add(last + rng.uniform(0.1, 1.5), 'save_stale', row=key, handle=handle, change=True)

    def _slots(self, key: str, low: float, high: float) -> list[float]:
        row = self.rows[key]
        if row.kind == 'cron':  # the row's first slot is the first after its creation
            low = max(low, self.created_at[key])
        return row.slots(low, high)

    def _faults(self) -> None:
        rng, config = self.rng, self.config
        forced = list(FAULTS[:3])
        rng.shuffle(forced)
        at = self.t0 + 3
        while (at := at + rng.expovariate(1 / config.fault_every)) < self.load_end - 4:
            verb = forced.pop() if forced else rng.choices(FAULTS, FAULT_WEIGHTS)[0]
            if verb == 'pause-leader':
                duration = config.lease_ttl + rng.uniform(0.3, 2.0)
            elif verb == 'kill-redis':
                duration = rng.uniform(0.2, 2.5)
            else:
                duration = rng.uniform(0.3, 3.0)
            self.add(at, verb, duration=round(duration, 3))


def cron_string(step: int) -> str:
    return '* * * * * *' if step == 1 else f'* * * * * */{step}'


def aware(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


# -- the journal ------------------------------------------------------------------------------------------------


@dataclass
class Journal:
    """What the soak did and when (epoch seconds): the timeline the evidence is built from."""

    t0: float
    rows: dict[str, Schedule]
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (time, who, what)
    row_events: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    faults: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end of its effect, what)
    counts: Counter[str] = field(default_factory=Counter)

    def count(self, name: str) -> None:
        with COUNTING:  # two threads count: the users' and the faults'
            self.counts[name] += 1

    def note(self, what: str, who: str = 'soak', at: float | None = None) -> None:
        self.events.append((time.time() if at is None else at, who, what))

    def row_note(self, key: str, what: str, at: float | None = None) -> None:
        self.row_events.setdefault(key, []).append((time.time() if at is None else at, what))

    def enabled(self, key: str) -> bool:
        states = self.rows[key].states
        return states[-1][2] if states else True

    def wrote_enabled(self, key: str, began: float, value: bool) -> None:
        if value != self.enabled(key):
            self.rows[key].states.append((began, time.time(), value))


# -- Redis, the schedulers and their faults ---------------------------------------------------------------------


class Cluster:
    """The private redis-server (AOF, fsync always) and the rqscheduler processes, started, broken and restarted."""

    def __init__(self, config: Config, journal: Journal) -> None:
        self.config = config
        self.journal = journal
        self.server = RedisServer(appendonly=True, extra_args=AOF_ARGS)
        self.database = ''
        self.processes: dict[str, subprocess.Popen] = {}
        self.outputs: dict[str, OutputReader] = {}
        self.paused: set[str] = set()
        self.generations = itertools.count(1)
        self.redis_up = False
        self.queue_before_kill = 0
        self.restarts_intact: list[bool] = []
        self.connection: redis.Redis | None = None

    def url(self, client_name: str) -> str:
        return f'{self.server.url}?client_name={client_name}'

    def start(self) -> None:
        self.server.start()
        self.redis_up = True
        self.connection = redis.Redis.from_url(self.url('soak'), socket_timeout=2, socket_connect_timeout=2)
        self.database = processes_database()
        for _ in range(self.config.schedulers):
            self.spawn()

    def spawn(self) -> str:
        name = f's{next(self.generations)}'
        env = {'DRQS_TEST_DB': self.database, 'DRQS_TEST_RECONCILE_INTERVAL': str(self.config.reconcile_interval)}
        options = ('--lease-ttl', str(self.config.lease_ttl), '--interval', LOOP_INTERVAL)
        self.processes[name] = scheduler_process(self.url(name), *options, name=name, env=env)
        self.outputs[name] = OutputReader(self.processes[name])
        self.journal.note(f'started {name}', who=name)
        return name

    @property
    def running(self) -> list[str]:
        return [name for name, process in self.processes.items() if process.poll() is None and name not in self.paused]

    def leader(self) -> str | None:
        assert self.connection is not None
        try:
            value = self.connection.get(keys.LOCK_KEY)
        except REDIS_OUTAGE_ERRORS:
            return None
        return keys.lease_holder(value.decode()) if value else None

    def kill(self, name: str) -> None:
        process = self.processes[name]
        process.kill()
        process.wait(10)
        self.paused.discard(name)

    def pause(self, name: str) -> None:
        self.processes[name].send_signal(signal.SIGSTOP)
        self.paused.add(name)

    def resume(self, name: str) -> None:
        if name in self.paused:
            self.processes[name].send_signal(signal.SIGCONT)
            self.paused.discard(name)

    def kill_redis(self) -> None:
        assert self.connection is not None
        with suppress(*REDIS_OUTAGE_ERRORS):
            self.queue_before_kill = self.connection.llen(QUEUE_KEY)
        self.server.kill()
        self.redis_up = False

    def start_redis(self) -> None:
        """The same port and data directory: the AOF is replayed, and the queue is back whole (fsync always)."""
        self.server.start()
        self.redis_up = True
        assert self.connection is not None
        with suppress(*REDIS_OUTAGE_ERRORS):
            self.restarts_intact.append(self.connection.llen(QUEUE_KEY) >= self.queue_before_kill)

    def stop(self) -> None:
        for name in list(self.paused):
            self.resume(name)
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if self.connection is not None:
            self.connection.connection_pool.disconnect()

    def logs(self) -> dict[str, list[str]]:
        return {name: reader.text.splitlines() for name, reader in self.outputs.items()}


# -- the command recorder ---------------------------------------------------------------------------------------


class CommandRecorder(threading.Thread):
    """Every command Redis runs (MONITOR), appended raw to a file, and the names of its clients once a second.

    Raw bytes, unparsed: the soak must not slow down what it watches. Reconnects after each Redis restart; the
    commands of the moments it is reconnecting are missing from the file.
    """

    def __init__(self, port: int, path: Path) -> None:
        super().__init__(name='chaos-monitor', daemon=True)
        self.port = port
        self.path = path
        self.halt = threading.Event()
        self.names = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)

    def run(self) -> None:
        with self.path.open('wb') as out:
            while not self.halt.is_set():
                with suppress(OSError):
                    self._record(out)
                self.halt.wait(0.02)

    def _record(self, out: Any) -> None:
        with socket.create_connection(('127.0.0.1', self.port), timeout=0.5) as sock:
            sock.sendall(b'CLIENT SETNAME chaos-monitor\r\nMONITOR\r\n')
            pending = b''
            names_due = 0.0
            while not self.halt.is_set():
                if time.monotonic() >= names_due:
                    out.write(self._client_names())
                    names_due = time.monotonic() + 1
                try:
                    chunk = sock.recv(1 << 16)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                pending += chunk
                cut = pending.rfind(b'\n') + 1
                out.write(pending[:cut])
                pending = pending[cut:]

    def _client_names(self) -> bytes:
        try:
            clients = self.names.client_list()
        except (redis.RedisError, OSError):
            return b''
        pairs = ' '.join(f'{c["addr"]}={c["name"]}' for c in clients if c.get('name'))
        return f'#names {time.time():.6f} {pairs}\n'.encode()

    def stop(self) -> None:
        self.halt.set()
        self.join(5)
        self.names.connection_pool.disconnect()


# -- the users --------------------------------------------------------------------------------------------------


class AppLog(logging.Handler):
    """What the app logs in this process (a sync that failed because Redis was down), kept for the report."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.failed_syncs = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f'{record.created:.3f} {record.levelname} {record.name}: {record.getMessage()}')
        # The one error the receivers log: rows committed that could not be brought into Redis.
        self.failed_syncs += record.name == 'django_rq_scheduled.signals' and record.levelno >= logging.ERROR


class Users:
    """The ORM side: rows created and edited in this process, as views and the admin would."""

    def __init__(self, journal: Journal, settle: float) -> None:
        self.journal = journal
        self.settle = settle
        self.pks: dict[str, int] = {}
        self.stale: dict[str, Any] = {}
        self.log = AppLog()
        logger = logging.getLogger('django_rq_scheduled')
        logger.addHandler(self.log)
        logger.setLevel(logging.INFO)
        logger.propagate = False

    def do(self, action: Action) -> bool:
        """Does one user action; False if it failed (the database locked, say)."""
        key = action.row
        assert key is not None
        if action.verb != 'create' and key not in self.pks:
            self.journal.count('edits skipped (row not created)')
            return False
        began, failed_syncs = time.time(), self.log.failed_syncs
        try:
            getattr(self, action.verb)(action, key, began)
        except Exception as exc:  # e.g. the database locked by a paused process: noted, and the soak goes on
            self.journal.count(f'{action.verb} failed')
            self.journal.row_note(key, f'{action.verb} FAILED: {type(exc).__name__}: {exc}', began)
            self._read_back(key, began)
            return False
        finally:
            connections['default'].close_if_unusable_or_obsolete()
            if self.log.failed_syncs > failed_syncs:
                # Redis was down: it follows the row at the next reconciliation.
                self.journal.rows[key].blind.append((began, time.time() + self.settle))
                self.journal.row_note(key, 'its sync failed (Redis down): a reconciliation will repair Redis')
        return True

    def create(self, action: Action, key: str, began: float) -> None:
        schedule = self.journal.rows[key]
        common = {'name': key, 'callable': 'tests.tasks.add', 'args': [1, 2], 'queue': 'default'}
        if schedule.kind == 'once':
            assert schedule.due is not None
            row = ScheduledJob.objects.create(scheduled_time=aware(schedule.due), **common)
        elif schedule.kind == 'interval':
            assert schedule.start is not None and schedule.interval is not None
            row = RepeatableJob.objects.create(
                scheduled_time=aware(schedule.start), interval=int(schedule.interval), interval_unit='seconds',
                repeat=schedule.repeat, **common,
            )  # fmt: skip
        else:
            row = CronJob.objects.create(cron_string=schedule.cron, timezone='UTC', repeat=schedule.repeat, **common)
        self.pks[key] = row.pk
        schedule.template_id = row.template_id
        schedule.created, schedule.synced = began, time.time()
        self.journal.count(f'created {schedule.kind}')
        self.journal.row_note(key, f'created ({row.template_id})', began)

    def _get(self, key: str) -> Any:
        return MODELS[self.journal.rows[key].kind]._base_manager.get(pk=self.pks[key])

    def save(self, action: Action, key: str, began: float) -> None:
        row = self._get(key)
        if action.change:
            row.description = f'edited at {began:.3f}'
        row.save()
        self.journal.count('saves near a due time')
        self.journal.row_note(key, f'saved a fresh instance ({self._what(action)}; {self._feedback(row)})', began)

    def load(self, action: Action, key: str, began: float) -> None:
        assert action.handle is not None
        self.stale[action.handle] = row = self._get(key)
        self.journal.row_note(key, f'loaded {action.handle} ({self._feedback(row)})', began)

    def save_stale(self, action: Action, key: str, began: float) -> None:
        assert action.handle is not None
        row = self.stale.pop(action.handle, None)
        if row is None:
            return  # its load failed
        if action.change:
            row.description = f'edited at {began:.3f}'
        row.save()
        self.journal.count('stale saves')
        self.journal.wrote_enabled(key, began, row.enabled)
        self.journal.row_note(key, f'saved {action.handle}, stale ({self._what(action)}; {self._feedback(row)})', began)

    def disable(self, action: Action, key: str, began: float) -> None:
        self._set_enabled(action, key, began, False)

    def enable(self, action: Action, key: str, began: float) -> None:
        self._set_enabled(action, key, began, True)

    def _set_enabled(self, action: Action, key: str, began: float, value: bool) -> None:
        if action.how == 'update':
            queryset = MODELS[self.journal.rows[key].kind].objects.filter(pk=self.pks[key])
            queryset.enable() if value else queryset.disable()
        else:
            row = self._get(key)
            row.enabled = value
            row.save()
        self.journal.wrote_enabled(key, began, value)
        self.journal.count('disables and enables')
        how = 'queryset' if action.how == 'update' else 'a save'
        self.journal.row_note(key, f'{"enabled" if value else "disabled"} by {how}', began)

    def _read_back(self, key: str, began: float) -> None:
        """After a failed write, what the database holds decides (the commit may have happened before the error)."""
        with suppress(Exception):
            self.journal.wrote_enabled(key, began, self._get(key).enabled)

    @staticmethod
    def _what(action: Action) -> str:
        return 'description changed' if action.change else 'nothing changed'

    @staticmethod
    def _feedback(row: Any) -> str:
        has_run = f'has_run={row.has_run}, ' if isinstance(row, ScheduledJob) else ''
        return f'{has_run}run_count={row.run_count}, enabled={row.enabled}'


# -- the run ----------------------------------------------------------------------------------------------------


class Soak:
    """One chaos run: the plan played against the cluster by the users and the faults, then the drain; everything
    the report needs is written into ``folder``."""

    def __init__(self, config: Config, folder: Path) -> None:
        self.config = config
        self.folder = folder
        self.rng = random.Random(config.seed + 1)  # the run's own choices (which standby), apart from the plan's
        self.journal = Journal(0.0, {})
        self.cluster = Cluster(config, self.journal)
        self.users = Users(self.journal, config.settle)
        self.killed: set[str] = set()
        self.recorder: CommandRecorder | None = None
        self.faults: list[Action] = []  # faults and their restores: a thread of their own
        self.edits: list[Action] = []  # rows created and edited: the ORM may block (a paused process's lock)
        self.restores = itertools.count(10**9)

    def run(self) -> None:
        """Sets up, plays the plan, drains, and writes everything the report needs into the folder."""
        started = time.monotonic()
        self.cluster.start()
        self._use_cluster()
        self.recorder = CommandRecorder(self.cluster.server.port, self.folder / 'monitor.log')
        self.recorder.start()
        try:
            wait_for(self.cluster.leader, timeout=60)
            t0 = math.ceil(time.time() / ALIGN) * ALIGN + ALIGN
            plan = Plan(self.config, t0)
            self.journal.t0 = t0
            self.journal.rows = plan.rows
            self.faults = [action for action in plan.actions if action.verb in FAULTS]
            self.edits = [action for action in plan.actions if action.verb not in FAULTS]
            self._play_both(until=plan.load_end)
            drain_start = self._drain()
            observed = self._observe()
        finally:
            self._stop()
        rules = Rules(
            settle=self.config.settle,
            drain_start=drain_start,
            faults=tuple((start, end) for start, end, _ in self.journal.faults),
        )
        save_run(self, observed, rules, time.monotonic() - started)

    def _use_cluster(self) -> None:
        """This process's ORM writes to the schedulers' database file, and its sync to the private Redis."""
        database = connections['default']
        database.close()
        database.settings_dict['NAME'] = self.cluster.database
        url = self.cluster.url('orm')
        settings.RQ_QUEUES = {name: {'URL': url, 'DEFAULT_TIMEOUT': 360} for name in ('default', 'high')}

    def _play_both(self, until: float) -> None:
        """Faults in a thread, edits in this one: an ORM write blocked by a paused process's database lock (5 s,
        SQLite's busy timeout) must not hold back the SIGCONT that releases it."""
        failures: list[BaseException] = []

        def play_faults() -> None:
            try:
                self._play(self.faults, until, between=self._look_after_processes)
            except BaseException as exc:  # re-raised below, in the main thread
                failures.append(exc)

        thread = threading.Thread(target=play_faults, name='chaos-faults', daemon=True)
        thread.start()
        try:
            self._play(self.edits, until, between=lambda: None)
        finally:
            thread.join()
        if failures:
            raise failures[0]

    def _play(self, heap: list[Action], until: float, between: Callable[[], object]) -> None:
        """Does the heap's actions at their times, up to ``until``; what is left (restores) is the drain's."""
        heapq.heapify(heap)
        while heap and heap[0].at <= until:
            wait = heap[0].at - time.time()
            if wait > 0:
                between()
                time.sleep(min(0.05, wait))
                continue
            self._do(heapq.heappop(heap))

    def _do(self, action: Action) -> None:
        handler: Callable[[Action], None] | None = getattr(self, '_' + action.verb.replace('-', '_'), None)
        if handler is None:
            self.users.do(action)
        else:
            handler(action)

    def _restore_later(self, action: Action, verb: str, target: str | None = None) -> None:
        restore = Action(time.time() + action.duration, next(self.restores), verb, target=target)
        heapq.heappush(self.faults, restore)

    def _fault(self, label: str, duration: float) -> None:
        now = time.time()
        self.journal.faults.append((now, now + duration + self.config.lease_ttl + 3, label))
        self.journal.note(label)
        self.journal.count(label.split(' ')[0])

    def _kill_leader(self, action: Action) -> None:
        leader = self.cluster.leader()
        if leader not in self.cluster.running:
            self.journal.count('faults skipped (no live leader)')
            return
        self.cluster.kill(leader)
        self.killed.add(leader)
        self._fault(f'kill-leader {leader} (kill -9)', action.duration)
        self._restore_later(action, 'spawn')

    def _kill_standby(self, action: Action) -> None:
        leader = self.cluster.leader()
        standbys = [name for name in self.cluster.running if name != leader]
        if not standbys:
            self.journal.count('faults skipped (no standby)')
            return
        name = self.rng.choice(standbys)
        self.cluster.kill(name)
        self.killed.add(name)
        self.journal.note(f'kill-standby {name} (kill -9)')
        self.journal.count('kill-standby')
        self._restore_later(action, 'spawn')

    def _pause_leader(self, action: Action) -> None:
        leader = self.cluster.leader()
        if leader not in self.cluster.running:
            self.journal.count('faults skipped (no live leader)')
            return
        self.cluster.pause(leader)
        self._fault(f'pause-leader {leader} (SIGSTOP for {action.duration:.1f} s)', action.duration)
        self._restore_later(action, 'resume', target=leader)

    def _kill_redis(self, action: Action) -> None:
        if not self.cluster.redis_up:
            self.journal.count('faults skipped (Redis down)')
            return
        self.cluster.kill_redis()
        self._fault(f'kill-redis (kill -9, down {action.duration:.1f} s)', action.duration + 3)
        self._restore_later(action, 'start-redis')

    def _spawn(self, action: Action) -> None:
        self.cluster.spawn()

    def _resume(self, action: Action) -> None:
        assert action.target is not None
        self.cluster.resume(action.target)
        self.journal.note(f'resumed {action.target} (SIGCONT)')

    def _start_redis(self, action: Action) -> None:
        self.cluster.start_redis()
        self.journal.note('Redis restarted on its AOF')

    def _look_after_processes(self) -> None:
        for name, process in list(self.cluster.processes.items()):
            if process.poll() is not None and name not in self.killed:
                self.killed.add(name)  # handled once
                self.journal.count('processes that died on their own')
                self.journal.note(f'{name} exited by itself with {process.returncode}', who=name)
                self.cluster.spawn()

    def _drain(self) -> float:
        """Every fault undone, every periodic row disabled, then the loop left alone until nothing is left to do."""
        for action in sorted(self.faults):
            if action.verb not in FAULTS:
                self._do(action)
        self.faults = self.edits = []
        wait_for(lambda: len(self.cluster.running) == self.config.schedulers and self.cluster.leader(), timeout=60)
        drain_start = time.time()
        for key, schedule in self.journal.rows.items():
            if schedule.periodic and key in self.users.pks:
                for _ in range(20):  # the database may be locked for a moment
                    if self.users.do(Action(time.time(), 0, 'disable', row=key)):
                        break
                    time.sleep(0.5)
        self.journal.note('drain: every periodic row disabled')
        connection = self.cluster.connection
        assert connection is not None

        def idle() -> bool:
            return connection.zcard(keys.SCHEDULED_JOBS_KEY) == 0 and connection.llen(keys.RUNS_KEY) == 0

        with suppress(AssertionError):
            wait_for(idle, timeout=60, step=0.2)
        time.sleep(2 * self.config.reconcile_interval + 1)  # a late resurrection by a reconciliation shows up here
        with suppress(AssertionError):
            wait_for(idle, timeout=30, step=0.2)
        self._look_after_processes()
        return drain_start

    def _observe(self) -> Observed:
        connection = self.cluster.connection
        assert connection is not None
        ids = [member.decode() for member in connection.lrange(QUEUE_KEY, 0, -1)]
        distinct = sorted(set(ids))
        with connection.pipeline(transaction=False) as pipe:
            for job_id in distinct:
                pipe.hget(keys.job_key(job_id), 'enqueued_at')
            stamps = pipe.execute()
        queues = {member.decode() for member in connection.smembers('rq:queues')} - {QUEUE_KEY}
        return Observed(
            pushes=Counter(ids),
            enqueued_at={job_id: parse_stamp(stamp) for job_id, stamp in zip(distinct, stamps) if stamp},
            scheduled={m.decode(): s for m, s in connection.zrange(keys.SCHEDULED_JOBS_KEY, 0, -1, withscores=True)},
            dead_letters={k.decode(): v.decode() for k, v in connection.hgetall(keys.DEAD_LETTERS_KEY).items()},
            rows=database_rows(),
            elsewhere={queue: connection.llen(queue) for queue in sorted(queues)},
        )

    def _stop(self) -> None:
        self.cluster.stop()
        if self.recorder is not None:
            self.recorder.stop()
        self.cluster.server.kill()
        with suppress(FileNotFoundError):
            shutil.copytree(Path(self.cluster.server.dir) / 'appendonlydir', self.folder / 'appendonlydir')
        self.cluster.server.close()
        connections['default'].close()
        for name, lines in self.cluster.logs().items():
            (self.folder / f'{name}.log').write_text('\n'.join(lines) + '\n')
        timeline = [f'{at:.3f} {who} {what}' for at, who, what in sorted(self.journal.events)]
        (self.folder / 'events.log').write_text('\n'.join(timeline) + '\n')
        rows = {key: [f'{at:.3f} {what}' for at, what in notes] for key, notes in self.journal.row_events.items()}
        (self.folder / 'rows.json').write_text(json.dumps(rows, indent=1))
        (self.folder / 'orm.log').write_text('\n'.join(self.users.log.lines) + '\n')


def parse_stamp(stamp: bytes) -> float:
    text = stamp.decode().rstrip('Z')
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def database_rows() -> dict[str, dict[str, Any]]:
    rows = {}
    for model in MODELS.values():
        for row in model._base_manager.all():
            rows[row.template_id] = {
                'enabled': row.enabled,
                'run_count': row.run_count,
                'has_run': getattr(row, 'has_run', None),
                'last_run': row.last_run,
                'next_run': row.next_run,
            }
    return rows


# -- the record of a run, and its report ------------------------------------------------------------------------

RUN_FILE = 'run.json'


def save_run(soak: Soak, observed: Observed, rules: Rules, seconds: float) -> None:
    """Everything the report needs, in the run's folder: the report can be made again from it (``--recheck``)."""
    journal = soak.journal
    record = {
        't0': journal.t0,
        'figures': run_figures(soak, seconds),
        'schedules': [asdict(row) for row in journal.rows.values() if row.template_id],
        'observed': {**vars(observed), 'pushes': dict(observed.pushes)},  # asdict() would mangle the Counter
        'rules': asdict(rules),
        'events': journal.events,
        'row_events': journal.row_events,
    }
    (soak.folder / RUN_FILE).write_text(json.dumps(record, default=str))


def load_run(folder: Path) -> tuple[Journal, list[tuple[str, Any]], Observed, Rules]:
    record = json.loads((folder / RUN_FILE).read_text())
    rows = {}
    for fields in record['schedules']:
        fields['states'] = [tuple(state) for state in fields['states']]
        fields['blind'] = [tuple(window) for window in fields['blind']]
        rows[fields['key']] = Schedule(**fields)
    journal = Journal(record['t0'], rows, [tuple(event) for event in record['events']], record['row_events'])
    observed = Observed(**record['observed'])
    observed.pushes = Counter(observed.pushes)
    rules = Rules(**{**record['rules'], 'faults': tuple(tuple(window) for window in record['rules']['faults'])})
    return journal, [tuple(figure) for figure in record['figures']], observed, rules


def report(folder: Path) -> tuple[list[tuple[str, Any]], list[str], int]:
    """The table of figures, the violations with their evidence, and the number of violations."""
    journal, figures, observed, rules = load_run(folder)
    findings = check(journal.rows.values(), observed, rules)
    table = [*figures[:-1], *findings.figures.items(), ('violations', len(findings.violations)), figures[-1]]
    if not findings.violations:
        return table, [], 0
    logs = {path.stem: path.read_text().splitlines() for path in sorted(folder.glob('s[0-9]*.log'))}
    return table, explain(findings.violations, journal, folder, folder, logs), len(findings.violations)


def run_figures(soak: Soak, seconds: float) -> list[tuple[str, Any]]:
    """What the run did; the checker's figures go before the last one (the run time)."""
    config, counts = soak.config, soak.journal.counts
    intact = soak.cluster.restarts_intact
    skipped = sum(n for name, n in counts.items() if name.startswith('faults skipped'))
    failed = sum(n for name, n in counts.items() if name.endswith(' failed'))
    created = ' / '.join(str(counts[f'created {kind}']) for kind in MODELS)
    edits = ' / '.join(str(counts[name]) for name in ('saves near a due time', 'stale saves', 'disables and enables'))
    return [
        ('seed', config.seed),
        ('load phase (s)', f'{config.load_seconds:.0f}'),
        (
            'schedulers / lease (s) / reconcile interval (s)',
            f'{config.schedulers} / {config.lease_ttl:g} / {config.reconcile_interval:g}',
        ),
        ('leaders killed -9', counts['kill-leader']),
        ('leaders paused past the lease (SIGSTOP, then SIGCONT)', counts['pause-leader']),
        ('standbys killed -9', counts['kill-standby']),
        (
            'Redis killed -9 and restarted on its AOF (queue whole after it)',
            f'{counts["kill-redis"]} ({sum(intact)} of {len(intact)})',
        ),
        ('faults skipped (no live leader, Redis already down)', skipped),
        ('scheduler processes that exited by themselves', counts['processes that died on their own']),
        ('rows created: one-off / interval / cron', created),
        ('user edits: saves near a due time / stale saves / disables and enables', edits),
        ('user edits that failed (e.g. database locked)', failed),
        ('user syncs that failed (Redis down; left to reconciliation)', soak.users.log.failed_syncs),
        ('run time (s)', f'{seconds:.0f}'),
    ]
