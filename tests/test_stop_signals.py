"""SIGINT/SIGTERM stop the loop wherever the main thread was when the signal landed (core/stop_signals.py)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import redis

from django_rq_scheduled.core import keys
from django_rq_scheduled.core.loop import run_schedulers
from django_rq_scheduled.core.scheduler import Scheduler
from django_rq_scheduled.core.stop_signals import StopOnSignals
from tests.processes import OutputReader, kill, scheduler_process, stop, wait_for


def handled_while_holding(lock: threading.Lock, handler, signum: int) -> bool:
    """Calls a signal handler as Python would if the signal landed while this thread held ``lock`` (inside
    ``Event.wait``, say); returns whether the handler came back."""
    done = threading.Event()

    def land() -> None:
        with lock:
            handler(signum, None)
        done.set()

    threading.Thread(target=land, daemon=True).start()  # a handler that deadlocks keeps only this thread
    return done.wait(5)


def threads_ended(name: str) -> bool:
    """Waits for the threads called ``name`` to end; whether they all did."""
    threads = [thread for thread in threading.enumerate() if thread.name == name]
    for thread in threads:
        thread.join(5)
    return not any(thread.is_alive() for thread in threads)


@pytest.mark.parametrize('event', ['wakeup', 'stop'])
@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_landing_while_the_loop_holds_its_own_event_lock_stops_it(connection, event, signum):
    """The loop waits on these events (its sleep, a standby's wait, the backoff): a signal between two of
    ``Event.wait``'s bytecodes lands with the event's lock held. Setting that event in the handler itself waited
    for the lock forever: the process never stopped (CI, 2026-11-29)."""
    loop = Scheduler(connection=connection).loop
    signals = loop._stop_on_signals()
    assert signals is not None
    try:
        handler = signal.getsignal(signum)
        assert handled_while_holding(getattr(loop, event)._cond, handler, signum)
        assert loop.stop.wait(5)
        assert loop.wakeup.is_set()
        assert loop.stopped_by == signum
    finally:
        signals.uninstall()


def test_uninstall_puts_back_the_handlers_and_ends_the_thread():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    heard: list[int] = []
    signals = StopOnSignals(heard.append, name='drqs-test-signals')
    signals.install()
    assert signal.getsignal(signal.SIGTERM) not in before
    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    signals.uninstall()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert threads_ended('drqs-test-signals')
    assert heard == [signal.SIGTERM]


def test_a_failing_stop_leaves_the_next_signal_heard(caplog):
    heard: list[int] = []

    def on_signal(signum: int) -> None:
        heard.append(signum)
        if len(heard) == 1:
            raise RuntimeError('the first stop fails')

    signals = StopOnSignals(on_signal)
    signals.install()
    try:
        handler = signal.getsignal(signal.SIGTERM)
        handler(signal.SIGTERM, None)
        handler(signal.SIGINT, None)
    finally:
        signals.uninstall()
    assert threads_ended('drqs-signals')
    assert heard == [signal.SIGTERM, signal.SIGINT]
    assert 'Stopping on SIGTERM failed' in caplog.text


def test_a_real_sigterm_stops_every_loop_of_the_process(connection):
    """``run_schedulers`` with two Redis databases (two loops, one thread each), stopped by a SIGTERM sent to this
    very process once both lead: each releases its lease and ends."""
    server = connection.connection_pool.connection_kwargs
    clients = [redis.Redis(host=server['host'], port=server['port'], db=db) for db in (3, 4)]
    schedulers = [Scheduler(connection=client, interval=0.05) for client in clients]
    both_led = threading.Event()

    def signal_once_both_lead() -> None:
        deadline = time.monotonic() + 10
        while not all(client.get(keys.LOCK_KEY) for client in clients) and time.monotonic() < deadline:
            time.sleep(0.01)
        if time.monotonic() < deadline:
            both_led.set()
        os.kill(os.getpid(), signal.SIGTERM)  # run_schedulers runs until a signal: it is sure to be heard

    try:
        threading.Thread(target=signal_once_both_lead, daemon=True).start()
        run_schedulers(schedulers)
        assert both_led.is_set()
        assert all(scheduler.loop.stop.is_set() for scheduler in schedulers)
        assert not any(client.get(keys.LOCK_KEY) for client in clients)
    finally:
        for client in clients:
            client.flushdb()
            client.connection_pool.disconnect()


def test_the_handlers_are_put_back_when_the_loop_fails_before_its_first_tick(connection, monkeypatch):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    scheduler = Scheduler(connection=connection)

    def fail() -> None:
        raise RuntimeError('a bug while registering the instance')

    monkeypatch.setattr(scheduler, 'register_birth', fail)
    with pytest.raises(RuntimeError, match='registering'):
        scheduler.run(burst=True)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_sigterm_stops_a_process_serving_two_redis_servers(redis_url):
    """``manage.py rqscheduler`` with its queues on two Redis databases runs two loops (``run_schedulers``): one
    SIGTERM stops both, each releasing its lease, and the process exits 0."""
    other_url = redis_url.rsplit('/', 1)[0] + '/5'
    clients = [redis.Redis.from_url(url) for url in (redis_url, other_url)]
    process = scheduler_process(
        redis_url, '--interval', '0.05', name='two-servers', env={'DRQS_TEST_HIGH_REDIS_URL': other_url}
    )
    output = OutputReader(process)
    try:
        wait_for(lambda: all(client.get(keys.LOCK_KEY) for client in clients), timeout=30)
        assert stop(process) == 0
        assert not any(client.get(keys.LOCK_KEY) for client in clients)
    finally:
        kill(process)
        clients[1].flushdb()
        for client in clients:
            client.connection_pool.disconnect()
    assert 'stopping 2 schedulers' in output.text
    assert 'Traceback' not in output.text


def test_sigterm_while_the_name_is_still_taken_ends_the_wait(connection, caplog):
    """A restart waits for its name's old entry to expire (``_register_birth_when_name_is_free``): a SIGTERM then
    ends the wait and the process, not only a running loop."""
    Scheduler(connection=connection, name='taken').register_birth()
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    with pytest.raises(SystemExit) as ended:
        Scheduler(connection=connection, name='taken').run()
    assert ended.value.code == 0
    assert 'waiting for it to expire' in caplog.text


def test_signals_in_a_row_stop_the_loop_once(connection):
    loop = Scheduler(connection=connection).loop
    signals = loop._stop_on_signals()
    assert signals is not None
    try:
        handler = signal.getsignal(signal.SIGTERM)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
            handler(signum, None)
        assert loop.stop.wait(5)
    finally:
        signals.uninstall()
    assert threads_ended(f'{loop.scheduler.name}-signals')
    assert loop.stopped_by in (signal.SIGTERM, signal.SIGINT)
