"""The loop of ``Scheduler.run()``: each tick reads the clock, beats, holds or takes the lease, moves the due jobs
and runs the tick hooks, then sleeps until the next due time or a producer's wake-up. Outages back off and retry;
SIGINT/SIGTERM finish the batch, release the lease and register the instance's death.

The loop drives its scheduler through the scheduler's public methods (``heartbeat``, ``acquire_lock``,
``move_due_jobs``...), so a subclass that overrides one is heard.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis

from . import keys, limits, scripts
from .errors import REDIS_OUTAGE_ERRORS, REDIS_UNREACHABLE_ERRORS, LeadershipLost
from .observer import SILENT, Observer
from .scores import format_score
from .stop_signals import StopOnSignals

if TYPE_CHECKING:
    from .scheduler import Scheduler

logger = logging.getLogger(__name__)

TickHook = Callable[['Scheduler'], Any]
"""Called by the leader after each pass over the due jobs (the Django side writes run feedback there)."""
MAX_BACKOFF = 10.0


def backoff(failures: int) -> float:
    """Seconds to wait after ``failures`` failures in a row: from 0.2 s, doubling, at most 10 s, with jitter."""
    return min(MAX_BACKOFF, 0.2 * 2.0 ** min(failures - 1, 6)) * random.uniform(0.8, 1.2)


class Loop:
    """The running state of one scheduler's loop: its stop and wake-up events, tick hooks and failures."""

    def __init__(self, scheduler: Scheduler, stop: threading.Event) -> None:
        self.scheduler = scheduler
        self.stop = stop
        self.wakeup = threading.Event()
        self.idle = threading.Event()
        """Clear while the loop moves due jobs: work in the process's other threads may wait for it (``wait_idle``)."""
        self.idle.set()
        self.hooks: list[TickHook] = []
        self.stopped_by: int | None = None
        self.observer: Observer = SILENT
        self._observer_failed = False
        self._failing_hooks: set[TickHook] = set()
        self._paused = False
        self._pause_problem = ''
        self._arm_script = scheduler.connection.register_script(scripts.ARM_WAKEUP)
        self._next_retry_due: float | None = None
        self._release_failing = False

    def wait_idle(self, timeout: float) -> bool:
        """Waits, at most ``timeout`` seconds, until the loop is not moving due jobs; True if it is not.

        Background work of the same process (a reconciliation) calls it between its batches: the interpreter runs
        one thread at a time, and a burst of moves must not share it with work that can wait.
        """
        return self.idle.wait(timeout)

    def request_stop(self) -> None:
        self.stop.set()
        self.wakeup.set()

    def run(self, burst: bool = False) -> None:
        """Runs until stopped, or one pass with ``burst``; outages are logged and retried, never end the loop."""
        signals = self._stop_on_signals()
        try:
            self._run_registered(burst)
        finally:
            if signals is not None:
                signals.uninstall()
        if self.stopped_by is not None:
            # As rq-scheduler's run() does: a signal ends it with SystemExit, once the lease is released.
            raise SystemExit(0)

    def _run_registered(self, burst: bool) -> None:
        """Registers the instance, runs the ticks until stopped, then releases the lease and registers its death."""
        scheduler = self.scheduler
        self._call_with_retry(self._register_birth_when_name_is_free)
        logger.info('Scheduler %s started (pid %s)', scheduler.name, os.getpid())
        listener = threading.Thread(target=self._listen_for_wakeups, name=f'{scheduler.name}-wakeups', daemon=True)
        listener.start()
        failures = 0
        try:
            while not self.stop.is_set():
                try:
                    if self._tick(burst) and burst:
                        break
                    failures = 0
                except LeadershipLost:
                    continue
                except Exception as exc:
                    # Nothing ends the loop but a stop: a supervisor would only restart it into the same error.
                    failures += 1
                    if isinstance(exc, REDIS_OUTAGE_ERRORS):
                        scheduler.lease.held = False
                    self._observe_tick()
                    delay = backoff(failures)
                    _log_failure(exc, delay, first=failures == 1)
                    self.stop.wait(delay)
        finally:
            self._shut_down()

    def _stop_on_signals(self) -> StopOnSignals | None:
        """SIGINT/SIGTERM stop the loop while it runs in the main thread (``run_schedulers`` handles them otherwise)."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def stop(signum: int) -> None:
            logger.info('Received %s; finishing the current batch', signal.Signals(signum).name)
            self.stopped_by = signum
            self.request_stop()

        signals = StopOnSignals(stop, name=f'{self.scheduler.name}-signals')
        signals.install()
        return signals

    def _register_birth_when_name_is_free(self) -> None:
        # A process restarted right after a kill -9 finds its own name still registered until the old entry
        # expires; waiting for that beats crash-looping under a supervisor.
        while not self.stop.is_set():
            try:
                self.scheduler.register_birth()
                return
            except ValueError as exc:
                logger.warning('%s; waiting for it to expire', exc)
                self.stop.wait(1.0)

    def _call_with_retry(self, func: Callable[[], Any]) -> None:
        """Calls ``func`` until Redis answers; a refusal other than an outage is logged and the loop goes on."""
        failures = 0
        while not self.stop.is_set():
            try:
                func()
                return
            except REDIS_OUTAGE_ERRORS as exc:
                failures += 1
                delay = backoff(failures)
                logger.warning('Redis is unavailable (%s); retrying in %.1f s', exc, delay)
                self.stop.wait(delay)
            except redis.RedisError as exc:
                logger.error('Could not %s (%s); going on without it', func.__name__.strip('_'), exc)
                return

    # -- one tick -------------------------------------------------------------------------------------------

    def _tick(self, burst: bool) -> bool:
        """One turn of the loop; True once a burst run has moved the due jobs."""
        scheduler = self.scheduler
        self._refresh_clock()
        self._heartbeat_or_log()
        leading = (scheduler.lease.held and scheduler.lease.still_ours()) or scheduler.acquire_lock()
        if not leading:
            self._observe_tick()
            self.stop.wait(self._standby_wait())
            return False
        self.idle.clear()
        try:
            report = scheduler.move_due_jobs()
        finally:
            self.idle.set()
        self._note_pause(report)
        self._next_retry_due = self._release_due_retries()
        self._run_tick_hooks()
        self._observe_tick()
        if burst:
            return True
        # Due entries of paused queues stay due: waking for them would spin; the loop wakes for later entries, a
        # producer's wake-up (a resume pushes one) or its longest sleep.
        self._sleep_until_next_due(after=report.read_at if getattr(report, 'paused', 0) else None)
        return False

    def _note_pause(self, report: Any) -> None:
        """Logs when this server's pause begins and ends, and a pause key it cannot read, once each."""
        paused = getattr(report, 'paused', 0) == -1
        if paused != self._paused:
            logger.info('Scheduling is paused on this Redis server' if paused else 'Scheduling runs again')
        self._paused = paused
        problem = getattr(report, 'pause_problem', '')
        if problem and problem != self._pause_problem:
            logger.error('The pause key %s cannot be read (%s): nothing is paused', keys.PAUSED_KEY, problem)
        self._pause_problem = problem

    def _refresh_clock(self) -> None:
        try:
            self.scheduler.clock.refresh_if_due()
        except REDIS_UNREACHABLE_ERRORS:
            raise
        except redis.RedisError as exc:  # e.g. TIME renamed away by a managed Redis: the host's clock it is
            logger.warning("Cannot read the Redis server's clock (%s); using this host's", exc)

    def _heartbeat_or_log(self) -> None:
        # The registry is for people to read: a heartbeat Redis refuses (out of memory, a key of the wrong type)
        # must not keep the leader from renewing its lease and moving jobs. An unreachable Redis ends the tick.
        try:
            self.scheduler.heartbeat()
        except REDIS_UNREACHABLE_ERRORS:
            raise
        except redis.RedisError as exc:
            logger.warning('Heartbeat failed (%s); the loop goes on', exc)

    def _release_due_retries(self) -> float | None:
        # Retries are RQ's jobs in RQ's keys: a refusal there (say, a script Redis will not run) must not stop the
        # moves of the schedule or the tick hooks. An unreachable Redis or a lost lease ends the tick.
        try:
            next_due = self.scheduler.mover.release_due_retries()
        except REDIS_UNREACHABLE_ERRORS:
            raise
        except redis.RedisError as exc:
            if not self._release_failing:
                logger.warning('Could not move due retries back to their queues (%s); the loop goes on', exc)
            self._release_failing = True
            return None
        self._release_failing = False
        return next_due

    def _run_tick_hooks(self) -> None:
        for hook in self.hooks:
            try:
                hook(self.scheduler)
            except REDIS_OUTAGE_ERRORS:
                raise
            except Exception as exc:
                # Logged once per outage (e.g. the database is down), not once per tick.
                if hook not in self._failing_hooks:
                    logger.exception('Tick hook %r failed; the loop goes on moving jobs', hook)
                self._failing_hooks.add(hook)
                logger.debug('Tick hook %r still failing: %s', hook, exc)
            else:
                if hook in self._failing_hooks:
                    logger.info('Tick hook %r works again', hook)
                self._failing_hooks.discard(hook)

    def _observe_tick(self) -> None:
        try:
            self.observer.tick_done(self.scheduler)
        except Exception:  # whoever watches the loop must not stop it from moving jobs
            if not self._observer_failed:
                logger.exception('The observer %r failed at the end of a tick; the loop goes on', self.observer)
            self._observer_failed = True

    # -- sleeping and waking --------------------------------------------------------------------------------

    def _standby_wait(self) -> float:
        return self.scheduler.beat_period

    def _longest_sleep(self) -> float:
        longest = self._standby_wait()
        socket_timeout = self.scheduler.connection.connection_pool.connection_kwargs.get('socket_timeout')
        if socket_timeout:
            longest = min(longest, socket_timeout * 0.8)
        return longest

    def _sleep_until_next_due(self, after: float | None = None) -> None:
        """Blocks until the next due time (of entries due later than ``after``, if given), a producer's wake-up, or
        the longest sleep, whichever is first."""
        clock = self.scheduler.clock
        now = clock.now()
        latest = now + self._longest_sleep()
        args: list[Any] = [format_score(latest), math.ceil((latest - now) * 1000) + 1000]
        armed = self._arm_script(keys=list(keys.WAKEUP_KEYS), args=args if after is None else [*args, repr(after)])
        wake_at = latest
        if armed:
            earliest, together = float(armed[0]), int(armed[1])
            wake_at = min(latest, self._plan_ahead(earliest, together, now))
        if self._next_retry_due is not None:  # a delayed retry waiting in RQ's registry: no producer wakes us for it
            wake_at = min(wake_at, self._next_retry_due)
        wait = wake_at - clock.now()
        if wait > 0.001 and not self.stop.is_set():
            # Timed in Python: Redis times out blocked clients on its own clock tick (100 ms at the default hz),
            # which would make every job up to 100 ms late. The wake-up listener ends the wait early.
            self.wakeup.wait(wait)
        self.wakeup.clear()

    def _plan_ahead(self, earliest: float, together: int, now: float) -> float:
        """When to wake for the entries due at ``earliest``: at that instant, once they are planned (``plan_ahead``)
        if many fire together and it is close; before it, early enough to plan them, if it is not yet close. Planning
        goes in steps (``limits.PLAN_AHEAD_STEP``), a pass between them, so jobs due meanwhile are not held up."""
        mover = self.scheduler.mover
        if together < limits.PLAN_AHEAD_FROM or earliest <= now:
            return earliest
        prepared = mover.prepared
        if prepared is not None and prepared.at == earliest and prepared.complete:
            return earliest  # woken early by a producer: the plan holds
        lead = min(limits.PLAN_AHEAD_MAX_LEAD, together * limits.PLAN_AHEAD_SECONDS_PER_ENTRY)
        if earliest - now > lead:
            return earliest - lead
        self.idle.clear()
        try:
            planned = mover.prepare(earliest, until=now + limits.PLAN_AHEAD_STEP)
            logger.debug('Planned %d of the %d jobs due at %s ahead', planned, together, format_score(earliest))
        except LeadershipLost:
            raise
        except REDIS_UNREACHABLE_ERRORS:
            raise
        except Exception:  # only a head start: the pass at the instant plans whatever was not planned ahead
            mover.prepared = None
            logger.warning('Could not plan the jobs due at %s ahead; planning them when due', earliest, exc_info=True)
            return earliest
        finally:
            self.idle.set()
        return earliest if mover.prepared is None or mover.prepared.complete else now  # else: a pass, the next step

    def _listen_for_wakeups(self) -> None:
        """Runs in a thread while the loop runs: turns a producer's push on the wake-up list into an event."""
        block = self._longest_sleep()
        connection = self.scheduler.connection
        while not self.stop.is_set():
            try:
                if not self.scheduler.lease.held:
                    self.stop.wait(0.1)  # a standby must not take the leader's wake-ups
                elif connection.blpop([keys.WAKEUP_KEY], timeout=max(0.1, round(block, 3))):
                    self.wakeup.set()
            except redis.RedisError:  # an outage, or a wake-up key someone broke: the timed sleep still bounds lateness
                self.stop.wait(1.0)

    def _shut_down(self) -> None:
        for step in (self.scheduler.remove_lock, self.scheduler.register_death):
            try:
                step()
            except redis.RedisError as exc:
                logger.warning('Could not %s at shutdown: %s', step.__name__, exc)
        logger.info('Scheduler %s stopped', self.scheduler.name)


def _log_failure(exc: Exception, delay: float, *, first: bool) -> None:
    if isinstance(exc, REDIS_OUTAGE_ERRORS):
        logger.warning('Redis is unavailable or refuses writes (%s); retrying in %.1f s', exc, delay)
    elif isinstance(exc, redis.RedisError):
        # e.g. a key of ours holding the wrong type: an operator must fix it.
        logger.error('Redis refused a command (%s); retrying in %.1f s', exc, delay)
    elif first:
        logger.exception('Unexpected error in the scheduler loop; retrying in %.1f s', delay)
    else:
        logger.error('Unexpected error in the scheduler loop again (%r); retrying in %.1f s', exc, delay)


def run_schedulers(schedulers: list[Scheduler], *, burst: bool = False) -> None:
    """Runs one loop per Redis server, in this process; SIGINT/SIGTERM stop them all."""
    if len(schedulers) == 1:
        schedulers[0].run(burst=burst)
        return

    def stop_all(signum: int) -> None:
        logger.info('Received %s; stopping %d schedulers', signal.Signals(signum).name, len(schedulers))
        for scheduler in schedulers:
            scheduler.request_stop()

    signals = StopOnSignals(stop_all)
    signals.install()
    threads = [threading.Thread(target=s.run, kwargs={'burst': burst}, name=s.name) for s in schedulers]
    try:
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            for thread in threads:
                thread.join(0.2)
    finally:
        signals.uninstall()
