"""The evidence of each violation of a chaos soak run, as one timeline in seconds from the start of the load phase.

It merges what the soak did to the row (bench/chaos.py's journal), the faults around it, the commands Redis ran that
name the row's template (MONITOR, each with the client that sent it: ``orm`` is the soak's own ORM and its syncs,
``s<n>`` a scheduler process; a command inside a Lua script shows the script's name), and the schedulers' log lines.
Then the writes Redis persisted for the row, in AOF order, and, for a job that reached the queue twice, which write
put it back into the schedule after its first run.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.chaos_check import Violation, template_of
from django_rq_scheduled.core import keys, scripts

WINDOW = 4.0  # seconds of context on each side of a violation's moments
MAX_LINES = 70
MAX_AOF_LINES = 30
EXPLAINED_PER_RULE = 3  # violations of one rule shown with their whole evidence; the others are listed
LISTED_PER_RULE = 100
READS = ('"HGET"', '"ZSCORE"', '"HMGET"')
VERSIONS_READ = f'"HMGET" "{keys.VERSIONS_KEY}"'
LONG_ARGUMENT = re.compile(r'"((?:[^"\\]|\\.){60,})"')
MONITOR_LINE = re.compile(r'^\+(\d+\.\d+) \[\d+ ([^\]]+)\] (.*)$')
LOG_TIME = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ')
# Commands that tell the story of a template: the schedule, the queues, the versions, the reads sync and
# reconciliation decide on. Scripts are shown through the commands they run, not their own call.
TOLD = re.compile(
    r'"(ZADD|ZREM|RPUSH|LPUSH|DEL|ZSCORE)" '
    r'|"(HMGET|HSET|HDEL)" "rq:drqs:versions" '
    r'|"HGET" "[^"]+" "meta"'
    r'|"HSET" "[^"]+" "status"'
)
FEEDBACK_LIST = keys.RUNS_KEY  # a subject of its own: the reads and trims of the run records
LIST_OPERATION = re.compile(rf'"(LRANGE|LTRIM)" "{re.escape(keys.RUNS_KEY)}"')
LOG_WORTH_SHOWING = re.compile(r'leader|Reconcil|unavailable|Traceback|Error|error|dead letter|Retired|Skipped')


def _script_names() -> tuple[dict[str, str], dict[str, str]]:
    """Our Lua scripts by SHA1 (EVALSHA) and by their first line (EVAL sends the text)."""
    by_sha, by_line = {}, {}
    for name in dir(scripts):
        text = getattr(scripts, name)
        if name.isupper() and isinstance(text, str) and 'redis.call' in text:
            by_sha[hashlib.sha1(text.encode()).hexdigest()] = name
            first = next(line for line in text.splitlines() if line.strip() and not line.startswith('local unpack'))
            by_line[first.strip()[:40]] = name
    return by_sha, by_line


SCRIPTS_BY_SHA, SCRIPTS_BY_LINE = _script_names()


@dataclass
class Line:
    at: float
    who: str
    text: str


@dataclass
class Subject:
    """One template id the evidence is about, and the time windows worth reading."""

    template_id: str
    windows: list[tuple[float, float]] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)

    def wants(self, moment: float) -> bool:
        return any(low <= moment <= high for low, high in self.windows)


def subjects_of(violations: Iterable[Violation]) -> dict[str, Subject]:
    subjects: dict[str, Subject] = {}
    for violation in violations:
        subject = subjects.setdefault(template_of(violation.subject), Subject(template_of(violation.subject)))
        subject.windows += [(moment - WINDOW, moment + WINDOW) for moment in violation.moments]
    return subjects


# -- MONITOR ----------------------------------------------------------------------------------------------------


def read_monitor(path: Path, subjects: dict[str, Subject]) -> None:
    """One pass over the MONITOR file: each subject gets its lines (in its windows), the senders named."""
    if not subjects or not path.exists():
        return
    templates = [template_id for template_id in subjects if template_id != FEEDBACK_LIST]
    mention = re.compile(r'(?<![\w-])(' + '|'.join(map(re.escape, templates)) + r')(?![0-9])')
    feedback = subjects.get(FEEDBACK_LIST)
    names: dict[str, str] = {}
    caller = caller_command = ''
    with path.open('rb') as lines:
        for raw in lines:
            text = raw.decode(errors='replace').rstrip('\r\n')
            if text.startswith('#names '):
                for pair in text.split(' ')[2:]:
                    address, _, name = pair.partition('=')
                    names[address] = name
                continue
            match = MONITOR_LINE.match(text)
            if not match:
                continue
            at, address, command = float(match[1]), match[2], match[3]
            if address == 'lua':  # Redis 7.0 shows a script's own commands right after the call that ran it
                who = f'{caller} {script_name(caller_command)}'
            else:
                named = re.match(r'"client" "setname" "([^"]+)"', command, re.IGNORECASE)
                if named:
                    names[address] = named[1]
                caller, caller_command = names.get(address, address), command
                who = caller
            if feedback and LIST_OPERATION.match(command) and feedback.wants(at):
                feedback.lines.append(Line(at, who, command))
            if not TOLD.match(command):
                continue
            for template_id in set(mention.findall(command)):
                subject = subjects[template_id]
                if subject.wants(at):
                    subject.lines.append(Line(at, who, shorten(command)))


def script_name(command: str) -> str:
    lowered = command[:12].lower()
    if lowered.startswith('"evalsha"'):
        sha = command.split('"')[3]
        return SCRIPTS_BY_SHA.get(sha, 'script')
    if lowered.startswith('"eval"'):
        for first, name in SCRIPTS_BY_LINE.items():
            if first in command.replace('\\"', '"'):
                return name
    return 'script'


def shorten(command: str, width: int = 200) -> str:
    text = LONG_ARGUMENT.sub(lambda m: f'"<{len(m[1])} chars>"', command)
    return text if len(text) <= width else text[: width - 3] + '...'


# -- the AOF ----------------------------------------------------------------------------------------------------


def aof_commands(folder: Path) -> Iterator[tuple[int | None, list[bytes]]]:
    """The commands of the incremental AOF files, in order, each with the last ``#TS:`` second before it."""
    manifest = folder / 'appendonlydir' / 'appendonly.aof.manifest'
    if not manifest.exists():
        return
    names = [line.split()[1] for line in manifest.read_text().splitlines() if ' type i' in line]
    stamp: int | None = None
    for name in names:
        data = (folder / 'appendonlydir' / name).read_bytes()
        position = 0
        while position < len(data):
            end = data.index(b'\r\n', position)
            head = data[position:end]
            position = end + 2
            if head.startswith(b'#TS:'):
                stamp = int(head[4:])
                continue
            if not head.startswith(b'*'):
                continue
            command = []
            for _ in range(int(head[1:])):
                end = data.index(b'\r\n', position)
                length = int(data[position + 1 : end])
                command.append(data[end + 2 : end + 2 + length])
                position = end + 2 + length + 2
            yield stamp, command


def read_aof(folder: Path, subjects: dict[str, Subject]) -> dict[str, list[str]]:
    """For each subject, the writes that name it (in its windows, to the second), in the order Redis persisted."""
    found: dict[str, list[str]] = {template_id: [] for template_id in subjects}
    if not subjects:
        return found
    mention = re.compile(rb'(?<![\w-])(' + b'|'.join(re.escape(s.encode()) for s in subjects) + rb')(?![0-9])')
    for stamp, command in aof_commands(folder):
        if command[0].upper() in (b'MULTI', b'EXEC', b'SELECT'):
            continue
        for template_id in {m.decode() for arg in command[:4] for m in mention.findall(arg)}:
            subject = subjects[template_id]
            if stamp is None or any(low - 1 <= stamp <= high + 1 for low, high in subject.windows):
                found[template_id].append(f'[TS {stamp}] ' + shorten(' '.join(aof_argument(a) for a in command), 160))
    return found


def aof_argument(argument: bytes) -> str:
    if len(argument) > 60 or not argument.isascii():
        return f'<{len(argument)} bytes>'
    return argument.decode()


# -- logs -------------------------------------------------------------------------------------------------------


def log_lines(logs: dict[str, list[str]]) -> list[Line]:
    out = []
    for name, lines in logs.items():
        for text in lines:
            match = LOG_TIME.match(text)
            if match and LOG_WORTH_SHOWING.search(text):
                at = time.mktime(time.strptime(match[1], '%Y-%m-%d %H:%M:%S')) + int(match[2]) / 1000
                out.append(Line(at, name, text[len(match[0]) :]))
    return out


# -- likely causes ----------------------------------------------------------------------------------------------


def runs_of(lines: list[Line], violation: Violation) -> list[Line]:
    """The pushes onto a queue of the violation's job (a duplicate) or of any run of its template (over repeat)."""
    if violation.rule == 'duplicated':
        return pushes_of(lines, violation.subject)
    return pushes_of(lines, template_of(violation.subject) + '_at_', prefix=True)


def pushes_of(lines: list[Line], job_id: str, *, prefix: bool = False) -> list[Line]:
    end = '' if prefix else '"'
    pattern = re.compile(rf'"[RL]PUSH" "rq:queue:[^"]+" "{re.escape(job_id)}{end}')
    return [line for line in lines if pattern.match(line.text)]


def readds(lines: list[Line], template_id: str, after: float) -> list[Line]:
    """Writes that put the template into the schedule after ``after``, other than the loop's own rescheduling."""
    pattern = re.compile(rf'"ZADD" "{re.escape(keys.SCHEDULED_JOBS_KEY)}" "[^"]+" "{re.escape(template_id)}"')
    return [line for line in lines if line.at >= after and pattern.match(line.text) and not line.who.endswith('MOVE')]


def last_read(lines: list[Line], writer: str, before: float, prefix: str) -> Line | None:
    reads = [line for line in lines if sender(line) == writer and line.at <= before and line.text.startswith(prefix)]
    return reads[-1] if reads else None


def sender(line: Line) -> str:
    return line.who.split(' ')[0]


@dataclass(frozen=True)
class Cause:
    label: str  # short, for the tally
    text: str  # the story, with its times


MONITOR_GAP = 'not told (MONITOR was reconnecting after a Redis restart)'


def likely_cause(
    violation: Violation, lines: list[Line], row_notes: list[tuple[float, str]], events: list[tuple[float, str, str]]
) -> Cause | None:
    """Which write put a job back into the schedule after it had run, and what its writer had read before."""
    if violation.rule == 'duplicated':
        runs = runs_of(lines, violation)
        if len(runs) < 2:
            return Cause(MONITOR_GAP, 'MONITOR missed one of the pushes: no timeline to go by.')
        first = runs[0].at  # the job went back into the schedule after its first run
        writes = readds(lines, template_of(violation.subject), first)[:1]
    elif violation.rule == 'over repeat':
        # The last write of the template, other than the loop's, before its first run too many: what it wrote
        # came after the run before it.
        extra = pushes_of(lines, f'{template_of(violation.subject)}_at_{round(violation.moments[1] * 1000)}')
        until = extra[0].at if extra else max(violation.moments)
        writes = [line for line in readds(lines, template_of(violation.subject), 0.0) if line.at < until][-1:]
        before = [line.at for line in runs_of(lines, violation) if writes and line.at < writes[0].at]
        first = before[-1] if before else (writes[0].at if writes else 0.0)
    else:
        return None
    if not writes:
        return Cause(MONITOR_GAP, 'no write that put it back into the schedule was seen.')
    write = writes[0]
    writer = sender(write)
    score = last_read(lines, writer, write.at, '"ZSCORE"')
    read_at = score.at if score else None
    raced = read_at is not None and read_at < first
    if writer == 'orm':
        return user_cause(write, read_at, raced, row_notes)
    return reconcile_cause(write, read_at, raced, first, lines, events, row_notes)


def user_cause(write: Line, read_at: float | None, raced: bool, row_notes: list[tuple[float, str]]) -> Cause:
    saves = [note for at, note in row_notes if at <= write.at and note.startswith(('saved', 'enabled', 'disabled'))]
    action = saves[-1] if saves else 'no action of the soak'
    told = f'The user action: "{action}"; its sync wrote the template back at {write.at:.3f}'
    if raced:
        return Cause(
            '(c) a user save racing the move',
            f'{told}, from a read of the schedule at {read_at:.3f}, before the run: sync reads, then writes, with '
            'nothing that stops a move in between.',
        )
    if 'stale' in action:
        return Cause(
            '(b) a save of a stale instance',
            f'{told}: the instance was loaded before the run, so it said the job had not run yet (has_run, '
            'run_count), and sync believed the row over Redis.',
        )
    return Cause(
        "(b) a save after the run, before the loop's feedback reached the row",
        f'{told}: the row still said the job had not run (feedback is applied on a later tick), and sync believed '
        'the row over Redis.',
    )


def reconcile_cause(
    write: Line,
    read_at: float | None,
    raced: bool,
    first: float,
    lines: list[Line],
    events: list[tuple[float, str, str]],
    row_notes: list[tuple[float, str]],
) -> Cause:
    writer = sender(write)
    version = last_read(lines, writer, write.at, VERSIONS_READ)
    reads = f'version read at {version.at:.3f}, ' if version else ''
    reads += f'score read at {read_at:.3f}, ' if read_at is not None else ''
    told = f'Reconciliation in {writer}: {reads}template written back at {write.at:.3f}'
    paused = [at for at, _, what in events if what.startswith(f'pause-leader {writer} ') and at <= write.at]
    if paused and version and version.at <= paused[-1]:
        return Cause(
            '(d) a reconciliation paused between its reads and its writes',
            f'{told}; {writer} was stopped (SIGSTOP) at {paused[-1]:.3f} and, on waking, wrote what it had read '
            'before the pause: reconciliation writes are not fenced by the lease.',
        )
    if version and version.at < first and not raced:
        return Cause(
            "(a) reconciliation's two reads straddled the move",
            f'{told}; the run moved the job at {first:.3f}, after the version read (not done yet) and before the '
            'score read (gone), so the job looked never synced.',
        )
    if raced:
        return Cause(
            'reconciliation racing the move', f'{told}; both reads were before the run, and the write after it.'
        )
    saves = [(at, note) for at, note in row_notes if first <= at <= write.at and note.startswith('saved')]
    if saves:
        return Cause(
            '(b) a save after the run, its sync failed, and reconciliation followed the row',
            f'{told}; the user action before it: "{saves[-1][1]}" at {saves[-1][0]:.3f}. The row said the job had '
            'not run; reconciliation believed the row over Redis.',
        )
    return Cause('reconciliation, other', f'{told}.')


def feedback_cause(violation: Violation, row_notes: list[tuple[float, str]], ran_again: bool, periodic: bool) -> Cause:
    """Why a row's run feedback disagrees with the queue at the end."""
    if ran_again:
        return Cause(
            'after a job of the row ran again',
            'The extra run restarted its count from what the row said; see its duplicate or over-repeat entry.',
        )
    due = min(violation.moments, default=None)  # one-offs only
    saves = [(at, note) for at, note in row_notes if note.startswith('saved') or note.endswith('by a save')]
    after = [(at, note) for at, note in saves if (at >= due - 0.05 if due else 'stale' in note)]
    if after:
        at, note = after[-1]
        return Cause(
            "(b) a save after the run overwrote the loop's fields",
            f'"{note}" at {at:.3f}: a whole-row save writes has_run / run_count / last_run / next_run as the instance '
            'had them, over the feedback the loop wrote (or before it, and the one-off never writes again).',
        )
    enables = [(at, note) for at, note in row_notes if note.startswith('enabled by')]
    if periodic and enables:
        return Cause(
            'a disable and enable restarted the run count from the row',
            f'Enabled again at {enables[-1][0]:.3f} ("{enables[-1][1]}"): disabling drops the template and the run '
            "count it keeps; enabling writes a new one from the row's run_count, which lags the runs (feedback not "
            'applied yet, or a stale save wrote it back).',
        )
    return Cause('not explained by a save', 'No save of the row after its run: a feedback record lost or overwritten?')


def concurrent_feedback(list_lines: list[Line], violation: Violation) -> Cause | None:
    """Two processes reading and trimming the run records at once, around the row's last run."""
    last = min(violation.moments, default=0.0)
    reading: dict[str, float] = {}  # sender → when it read records it has not trimmed yet
    for line in sorted(list_lines, key=lambda line: line.at):
        if not last - 1 <= line.at <= last + WINDOW:
            continue
        who = sender(line)
        others = {other: at for other, at in reading.items() if other != who}
        if line.text.startswith('"LTRIM"') and others:
            other, read_at = next(iter(others.items()))
            return Cause(
                '(e) two processes applied run feedback at once',
                f'{who} trimmed the run records at {line.at:.3f} ({line.text}) while {other}, which read them at '
                f'{read_at:.3f}, had not written or trimmed yet: one writes older absolute counts over newer ones, '
                'and LTRIM by count drops records that nobody applied. (A leader paused in apply_feedback, or '
                'blocked on the database lock, and its successor.)',
            )
        if line.text.startswith('"LRANGE"'):
            reading[who] = line.at
        else:
            reading.pop(who, None)
    return None


# -- the report -------------------------------------------------------------------------------------------------


def trimmed(timeline: list[Line]) -> list[Line]:
    """Reads only where they explain a write (the half second before one), then the head and the tail."""
    writes = [line.at for line in timeline if not line.text.startswith(READS)]
    kept = [
        line for line in timeline if not line.text.startswith(READS) or any(0 <= at - line.at <= 0.5 for at in writes)
    ]
    if len(kept) <= MAX_LINES:
        return kept
    half = MAX_LINES // 2
    gap = Line(kept[half].at, '', f'... {len(kept) - 2 * half} lines left out ...')
    return [*kept[:half], gap, *kept[-half:]]


def render(
    violation: Violation,
    cause: Cause | None,
    subject: Subject,
    row_notes: list[tuple[float, str]],
    events: list[tuple[float, str, str]],
    logs: list[Line],
    aof: list[str],
    t0: float,
) -> list[str]:
    timeline = [Line(at, 'soak', f'[row] {what}') for at, what in row_notes]
    timeline += [Line(at, who, f'[event] {what}') for at, who, what in events if subject.wants(at)]
    timeline += [line for line in logs if subject.wants(line.at)]
    timeline += subject.lines
    timeline.sort(key=lambda line: line.at)
    if len(timeline) > MAX_LINES:
        timeline = trimmed(timeline)
    out = [f'#### {violation.rule}: {violation.subject}', '', violation.detail, '']
    if cause:
        out += [f'Likely cause: {cause.label}. {cause.text}', '']
    out += ['```', *(f'{line.at - t0:9.3f}  {line.who:<16} {line.text}' for line in timeline), '```']
    if aof:
        shown = aof[:MAX_AOF_LINES]
        more = f' ({len(aof) - len(shown)} more)' if len(aof) > len(shown) else ''
        out += ['', f'AOF writes naming {subject.template_id}{more}:', '```', *shown, '```']
    return [*out, '']


def explain(
    violations: list[Violation], journal: Any, folder: Path, redis_dir: str, logs: dict[str, list[str]]
) -> list[str]:
    """The tally of likely causes, then the violations by rule, each listed, a few with their whole timelines:
    the first ones of each rule and the first one of each cause."""
    by_rule: dict[str, list[Violation]] = defaultdict(list)
    for violation in sorted(violations, key=lambda v: min(v.moments, default=0.0)):
        by_rule[violation.rule].append(violation)
    key_of = {schedule.template_id: key for key, schedule in journal.rows.items()}

    def notes(violation: Violation) -> list[tuple[float, str]]:
        return journal.row_events.get(key_of.get(template_of(violation.subject), ''), [])

    shown = [violation for group in by_rule.values() for violation in group[:EXPLAINED_PER_RULE]]
    told = [violation for violation in violations if violation.rule in ('duplicated', 'over repeat')]
    ran_again = {template_of(violation.subject) for violation in told}
    causes: dict[int, Cause] = {}
    firsts: dict[tuple[str, str], Violation] = {}  # the first violation of each (rule, cause): shown in full
    for violation in by_rule.get('feedback', []):
        periodic = journal.rows[key_of[violation.subject]].periodic
        causes[id(violation)] = feedback_cause(violation, notes(violation), violation.subject in ran_again, periodic)
        firsts.setdefault((violation.rule, causes[id(violation)].label), violation)
    subjects = subjects_of([*shown, *told, *firsts.values()])
    unexplained = [v for v in by_rule.get('feedback', []) if causes[id(v)].label == 'not explained by a save']
    if unexplained:
        windows = [(moment - 1, moment + WINDOW) for violation in unexplained for moment in violation.moments]
        subjects[FEEDBACK_LIST] = Subject(FEEDBACK_LIST, windows)
    read_monitor(folder / 'monitor.log', subjects)
    list_lines = subjects[FEEDBACK_LIST].lines if unexplained else []
    for violation in unexplained:
        cause = concurrent_feedback(list_lines, violation)
        if cause:
            causes[id(violation)] = cause
            firsts.setdefault((violation.rule, cause.label), violation)
    for violation in sorted(told, key=lambda v: min(v.moments, default=0.0)):
        lines = subjects[template_of(violation.subject)].lines
        cause = likely_cause(violation, lines, notes(violation), journal.events)
        if cause:
            causes[id(violation)] = cause
            firsts.setdefault((violation.rule, cause.label), violation)
    shown += [violation for violation in firsts.values() if violation not in shown]
    aof = read_aof(Path(redis_dir), {template_of(v.subject): subjects[template_of(v.subject)] for v in shown})
    logged = log_lines(logs)
    out = ['', '## Violations', '']
    tally = Counter(
        (violation.rule, causes[id(violation)].label) for violation in violations if id(violation) in causes
    )
    if tally:
        out += ['Likely causes:', '', '| violation | likely cause | count |', '| --- | --- | --- |']
        out += [f'| {rule} | {label} | {count} |' for (rule, label), count in sorted(tally.items())]
        out.append('')
    for rule, group in by_rule.items():
        out += [f'### {rule} ({len(group)})', '']
        for violation in group[:LISTED_PER_RULE]:
            cause = causes.get(id(violation))
            why = f' [{cause.label}]' if cause else ''
            out.append(
                f'- {violation.subject} ({key_of.get(template_of(violation.subject), "?")}): {violation.detail}{why}'
            )
        if len(group) > LISTED_PER_RULE:
            out.append(f'- ... and {len(group) - LISTED_PER_RULE} more')
        out.append('')
        for violation in (v for v in group if v in shown):
            template_id = template_of(violation.subject)
            subject = subjects[template_id]
            extra = [line for line in list_lines if subject.wants(line.at)] if violation.rule == 'feedback' else []
            out += render(
                violation, causes.get(id(violation)), subject, notes(violation), journal.events, logged + extra,
                aof.get(template_id, []), journal.t0,
            )  # fmt: skip
    return out
