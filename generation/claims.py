"""Claiming by plan, for batching and model affinity (docs/architecture.md §3.3): the
worker reads the round's heads, batching.plan_claim chooses, and the chosen rows start here,
each a conditional UPDATE that skips a row another worker holds. Off (both settings at their
defaults), workers claim with services.job_claim_next's one statement, as they always did.
"""

from collections.abc import Callable

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from .batching import Plan, plan_claim
from .models import Job
from .selectors import round_heads
from .services import job_claim_next

# The turns a plan weighs (more than a batch takes), and the plans tried while other workers
# claim the planned heads first, before the plain claim.
ROUND_WINDOW = 32
CLAIM_TRIES = 3


def claims_by_plan() -> bool:
    """Whether workers claim by plan (jobs_claim): batching or affinity is on. Off, the
    claim is job_claim_next's one statement, as it always was."""
    return settings.STUDIO_BATCH_MAX > 1 or settings.STUDIO_AFFINITY_MAX_DEFER > 0


class _PassedTooOften(Exception):
    """A head the plan passes reached its bound meanwhile (another worker passed it too)."""


def jobs_claim(*, worker: str, holds: Callable[[str], bool] | None = None) -> list[Job]:
    """Claim what batching.plan_claim chooses from the current round: the jobs to run as one
    batch, in order; [] when none waits. `holds(source)`: whether this worker has that model.

    1. Read the round's heads, unlocked, and plan.
    2. In one transaction (`_claim_plan`): count a pass on each head passed, planning again
       if one went past its bound meanwhile; start the leader (planning again without it if
       another worker holds its row) and the other members still free.
    3. After CLAIM_TRIES plans lost to other workers, claim as job_claim_next does.
    """
    exclude: set = set()
    for _ in range(CLAIM_TRIES):
        heads = round_heads(limit=ROUND_WINDOW, exclude=exclude)
        if not heads:
            if not exclude:
                return []
            break
        plan = plan_claim(heads, holds=holds, batch_max=settings.STUDIO_BATCH_MAX,
                          max_defer=settings.STUDIO_AFFINITY_MAX_DEFER)
        try:
            claimed = _claim_plan(plan, worker=worker)
        except _PassedTooOften:
            continue
        if claimed:
            return claimed
        exclude.add(plan.members[0].pk)
    job = job_claim_next(worker=worker)
    return [] if job is None else [job]


def _claim_plan(plan: Plan, *, worker: str) -> list[Job]:
    now = timezone.now()
    with transaction.atomic():
        if plan.passed and settings.STUDIO_AFFINITY_MAX_DEFER > 0:
            _count_passes(plan.passed)
        started = _start([plan.members[0].pk], worker=worker, now=now)
        if not started:
            transaction.set_rollback(True)  # nobody was passed: the plan did not happen
            return []
        started += _start([head.pk for head in plan.members[1:]], worker=worker, now=now)
    place = {head.pk: i for i, head in enumerate(plan.members)}
    return sorted(started, key=lambda job: place[job.pk])


def _start(pks: list, *, worker: str, now) -> list[Job]:
    """Start those of these queued jobs that no other worker is claiming (never waited for)."""
    if not pks:
        return []
    table = Job._meta.db_table
    sql = (
        f"UPDATE {table} SET status = %s, attempt = attempt + 1, worker = %s, "  # noqa: S608
        "started_at = %s, heartbeat = %s, step = 0, error = '' "
        f"WHERE id IN (SELECT id FROM {table} WHERE id = ANY(%s) AND status = %s "
        "FOR UPDATE SKIP LOCKED) RETURNING *"
    )
    return list(Job.objects.raw(
        sql, [Job.Status.RUNNING, worker, now, now, list(pks), Job.Status.QUEUED]))


def _count_passes(heads: list) -> None:
    """One more pass on each of these queued heads. Locked in id order, so two workers
    passing the same heads wait for each other rather than deadlock, and each sees the
    other's count: a head past the bound raises _PassedTooOften, rolling the claim back."""
    table = Job._meta.db_table
    sql = (
        f"UPDATE {table} SET deferred = deferred + 1 WHERE id IN ("  # noqa: S608
        f"SELECT id FROM {table} WHERE id = ANY(%s) AND status = %s ORDER BY id FOR UPDATE) "
        "RETURNING deferred"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [[head.pk for head in heads], Job.Status.QUEUED])
        counts = [row[0] for row in cursor.fetchall()]
    if any(count > settings.STUDIO_AFFINITY_MAX_DEFER for count in counts):
        raise _PassedTooOften
