"""Planning ahead: the occurrences many templates fire together (``0 * * * *``) are read and planned before their
instant, so at the instant only their move calls go out.

The loop sees, as it arms its wake-up, how many entries share the earliest due score. From ``limits.PLAN_AHEAD_FROM``
of them on, it wakes early enough to read and plan them with that score as "now" (``Mover.prepare``), sleeps until
the server's clock reaches it, and the next pass sends the planned batches first, pipelined (``Mover.move_due_jobs``).

What keeps a plan made early exactly as safe as one made at the instant:

- every move is guarded, in the move script, on the entry's exact score (a cancel or a reschedule since leaves it
  alone), on the lease token (a deposed leader moves nothing) and on the pause as it stands when it is applied;
- an entry is kept only if the script can also tell its template unchanged since it was read: a copy of a
  ``Scheduler`` API template checks the digest of its planning fields, and a row's compact template its version
  (``~v``, a digest of the whole definition), with an expectation added here. Anything else is planned at the
  instant, as before, and so is an entry whose plan reads its previous run (overlap ``skip``, ``buffer_one``,
  ``cancel_other``: that run may end meanwhile) or that needs RQ's own enqueue (dependencies);
- an entry not applied (changed, paused) stays due and the pass that follows plans it again;
- a plan is applied only from its instant until ``limits.PLAN_AHEAD_TOLERANCE`` after it (never more than the
  smallest misfire grace among its entries): a loop that wakes later plans again, with the real "now";
- the run's ``enqueued_at`` is stamped when the batch is sent, not when it was planned.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from redis.exceptions import NoScriptError, RedisError
from rq.utils import utcformat

from . import compact, keys, limits, occurrence_copy, overlap
from .errors import LeadershipLost
from .move_script import MOVE_KEYS
from .moves import ENQUEUED, Parsed
from .pending import PendingReplies, pack

KIND_KEYS = ('cron_string', 'interval')
"""The keys of a template's meta that tell its kind (``observer.kind_of``)."""


@dataclass
class Prepared:
    """Batches planned ahead of the instant ``at``, by the leader holding ``token``."""

    at: float
    token: str
    batches: list[Any] = field(default_factory=list)
    tolerance: float = limits.PLAN_AHEAD_TOLERANCE
    """Seconds after ``at`` the plan may still be applied."""
    packed: list[bytes] = field(default_factory=list)
    """The move call of each batch, as sent, ``placeholder`` where its runs' ``enqueued_at`` goes."""
    offset: int = 0
    """Due entries read or stepped over so far: where the next read of the plan starts."""
    read: int = 0
    complete: bool = False
    """Every entry that can be planned ahead is (or planning stopped for good): nothing more to do before ``at``."""
    placeholder: str = field(default='', init=False)
    """Planned as the runs' ``enqueued_at``, replaced by the instant they are sent at: as long as a stamp, and no
    job's data can hold it (a NUL, then random digits no one outside this process has seen)."""

    def __post_init__(self) -> None:
        length = len(utcformat(datetime.fromtimestamp(self.at, tz=timezone.utc)))
        self.placeholder = ('\x00' + secrets.token_hex(length))[:length]

    def fits(self, stamp: str) -> bool:
        """Whether ``stamp`` can replace the placeholder (as long as it: the packed lengths stay right)."""
        return len(stamp) == len(self.placeholder)

    def stamp_call(self, calls: bytes, stamp: str) -> bytes:
        """One packed call with ``stamp`` as its runs' ``enqueued_at``."""
        self._check_fits(stamp)
        return calls.replace(self.placeholder.encode(), stamp.encode())

    def stamped(self, stamp: str) -> Iterator[bytes]:
        """The move calls with ``stamp`` as their ``enqueued_at``, each stamped only when the one before has gone:
        stamping a plan of 50,000 runs takes tens of milliseconds, which the first call need not wait for."""
        self._check_fits(stamp)  # now, not when the first call is stamped
        return (self.stamp_call(calls, stamp) for calls in self.packed)

    def _check_fits(self, stamp: str) -> None:
        if not self.fits(stamp):
            raise ValueError(f'a stamp of {len(stamp)} characters for a placeholder of {len(self.placeholder)}')

    @property
    def entries(self) -> int:
        return sum(len(batch.entries) for batch in self.batches)

    def applies_at(self, now: float, token: str) -> bool:
        return token == self.token and self.at <= now <= self.at + self.tolerance


def guarded(item: Any, entry: Any) -> bool:
    """Whether ``entry`` may be planned ahead, given the guard that tells its template unchanged when applied (added
    here if it needs one); ``item``: the parsed template it was planned from."""
    if not isinstance(item, Parsed) or not item.is_our_template or entry.slow_path or entry.one_off is not None:
        return False
    if item.previous_run_to_check is not None or entry.outcome != ENQUEUED or not entry.enqueued_id:
        return False
    if any(command[0] == occurrence_copy.COPY_COMMAND for command in entry.commands):
        return True
    version = item.raw.get(compact.VERSION_FIELD.encode())
    if item.compact and version:
        entry.commands.insert(0, (overlap.EXPECT_COMMAND, keys.job_key(item.member), compact.VERSION_FIELD, version))
        return True
    return False


def may_be_our_template(fields: dict[bytes, bytes]) -> bool:
    """From a due entry's planning fields, cheaply: whether it may be a periodic template of ours (only those are
    planned ahead; a false yes costs a plan, a false no a head start)."""
    kind = fields.get(compact.MARKER)
    if kind is not None:
        return b'interval' in kind or b'cron' in kind
    meta = fields.get(b'meta') or b''
    return b'interval' in meta or b'cron_string' in meta


def tolerance_of(items: Iterable[Any]) -> float:
    """The longest a plan of these templates may wait to be applied: no more than any one's misfire grace."""
    graces = [item.ours.get('misfire_grace') for item in items]
    return min([limits.PLAN_AHEAD_TOLERANCE, *(float(grace) for grace in graces if grace is not None)])


def prepare(mover: Any, at: float, prepared: Prepared | None = None, *, until: float | None = None) -> Prepared:
    """Reads, plans and packs the moves of the occurrences due at ``at`` that can be planned this early, batch by
    batch as the mover reads them (entries of paused queues stepped over), going on with ``prepared`` if given,
    until all are planned (``complete``), the instant comes, or (if given) the mover's clock reaches ``until``."""
    prepared = prepared or Prepared(at, mover.lease.token)
    while not prepared.complete and not mover.stop.is_set():
        if prepared.read >= limits.PLAN_AHEAD_MAX_ENTRIES:
            prepared.complete = True
            break
        _plan_next_batch(mover, prepared)
        now = mover.clock.now()
        if now >= at:
            prepared.complete = True  # the instant is here: what is planned goes now, the pass plans the rest
        elif until is not None and now >= until:
            break
    return prepared


def _plan_next_batch(mover: Any, prepared: Prepared) -> None:
    read = mover.reader.read(prepared.at, prepared.offset, mover.batch_size)
    prepared.offset += len(read.pairs) + max(read.stepped_over, 0)
    prepared.read += len(read.pairs)
    chosen = [index for index, fields in enumerate(read.fields) if may_be_our_template(fields)]
    if (len(read.pairs) < mover.batch_size and not read.more) or (read.pairs and not chosen):
        prepared.complete = True  # all read, or a burst of one-offs (their moves need no planning ahead)
    pairs, fields = [read.pairs[index] for index in chosen], [read.fields[index] for index in chosen]
    if pairs:
        batch = mover.plan_batch(pairs, fields, prepared.at, enqueued_at=prepared.placeholder)
        kept = [(item, entry) for item, entry in zip(batch.decoded, batch.entries) if guarded(item, entry)]
        if kept:
            decoded, entries = (list(column) for column in zip(*kept))
            _add_batch(mover, prepared, replace(batch, decoded=decoded, entries=entries))
    mover.lease.renew_if_due()  # planning many takes seconds: LeadershipLost if the lease went meanwhile


def _add_batch(mover: Any, prepared: Prepared, batch: Any) -> None:
    """Adds a planned batch to the plan, packed as it is planned: the instant may come before the next is."""
    mover._load_scripts_once()
    header = ('EVALSHA', mover._move_script.sha, len(MOVE_KEYS), *MOVE_KEYS)
    pool = mover.connection.connection_pool
    calls = (*header, *mover._move_argv(batch.planner, batch.entries, fenced=True))
    prepared.packed.append(b''.join(pack(pool, [calls])))
    prepared.batches.append(batch)
    prepared.tolerance = min(prepared.tolerance, tolerance_of(batch.decoded))
    _keep_only_what_the_reply_needs(batch)


def _keep_only_what_the_reply_needs(batch: Any) -> None:
    # A plan of 20,000 occurrences would hold their whole templates and writes until the instant: once packed, only
    # what reading the replies needs stays (an entry's outcome, a run's queue and kind for the observer).
    for item, entry in zip(batch.decoded, batch.entries):
        entry.commands = []
        item.raw = {b'origin': item.raw.get(b'origin', b'')}
        item.meta = {name: item.meta[name] for name in KIND_KEYS if name in item.meta}
        item.ours = {}


def send(mover: Any, prepared: Prepared, now: float, report: Any) -> None:
    """Sends the planned moves, stamped ``now``, in one write; then reports how each batch went, the first error
    (a lost lease, Redis refusing writes) raised once every batch's outcome is known."""
    stamp = utcformat(datetime.fromtimestamp(now, tz=timezone.utc))
    if not prepared.packed or not prepared.fits(stamp):
        return  # nothing planned, or a stamp of another length than the placeholder: the pass plans them again
    pool = mover.connection.connection_pool
    replies = PendingReplies.of_packed(pool, prepared.stamped(stamp), len(prepared.packed)).wait()
    failed: Exception | None = None
    for index, (batch, reply) in enumerate(zip(prepared.batches, replies)):
        batch.planner.enqueued_at = stamp
        try:
            if isinstance(reply, NoScriptError):  # Redis restarted since the plan: loaded again, sent again
                mover._scripts_missing = True
                mover._load_scripts_once()
                again = prepared.stamp_call(prepared.packed[index], stamp)
                [reply] = PendingReplies.of_packed(pool, [again], 1).wait()
            mover._finish_batch(batch, reply, report, fenced=True)
        except (RedisError, LeadershipLost) as exc:
            failed = failed or exc
    if failed is not None:
        raise failed
