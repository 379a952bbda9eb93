"""What a worker claims (docs/architecture.md §3.3): `claim`, which tasks.run_job calls.

Claiming by plan, for batching and model affinity: the worker reads the round's heads,
batching.plan_claim chooses, and the chosen rows start here, each a conditional UPDATE that
skips a row another worker holds. Off (both settings at their defaults), workers claim with
services.job_claim_next's one statement, as they always did.

Models per worker: a worker claims only jobs it can run (ClaimFilter, from the worker
registry); a message it took for a job only another worker can run is passed on (pass_on).
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from . import worker_registry
from .batching import Head, Plan, plan_claim
from .models import Job
from .selectors import round_heads
from .services import dispatch, job_claim_next

# The turns a plan weighs (more than a batch takes), and the plans tried while other workers
# claim the planned heads first, before the plain claim.
ROUND_WINDOW = 32
CLAIM_TRIES = 3


@dataclass(frozen=True)
class ClaimFilter:
    """What this worker may claim. Never a job whose model only other workers taking jobs
    list: theirs to run. Any job whose model it lists; and one whose model no worker up lists
    (its worker went away, or the web server named it by a path on a disk this worker
    shares) when the recipe's source is on this host."""

    mine: frozenset[str]
    theirs: tuple[str, ...]  # listed by other workers taking jobs, not by this one

    def can_run(self, recipe: dict) -> bool:
        model = recipe.get("model") or {}
        name, source = model.get("name"), model.get("source")
        if name in self.mine:
            return True
        if name in self.theirs:
            return False
        return isinstance(source, str) and worker_registry.loadable(source)

    def orphaned(self) -> list[str]:
        """The models of queued jobs that this worker cannot load and no other worker up
        lists (their worker went away): passed by name in the claim statement, so any number
        of them at the head of the fair order never hides a job this worker can run. One
        query over the queued jobs (a partial index), a stat call per model; made only once a
        claim met a job it cannot run (services.job_claim_next)."""
        queued = (Job.objects.filter(status=Job.Status.QUEUED)
                  .values_list("recipe__model__name", "recipe__model__source").distinct())
        return sorted({
            name for name, source in queued
            if name not in self.mine and name not in self.theirs
            and not self.can_run({"model": {"name": name, "source": source}})
        })


def claim_filter() -> ClaimFilter | None:
    """This worker's ClaimFilter now: one Redis read. None where it claims anything, as
    before: in a process that publishes nothing (a test's, an eager run), or when Redis
    does not answer (the claim has other troubles then)."""
    this = worker_registry.this_worker()
    if this is None:
        return None
    node, mine = this
    try:
        workers = worker_registry.taking_jobs(worker_registry.live_workers())
    except redis.RedisError:
        return None
    others = [worker["models"] for worker in workers if worker["name"] != node]
    return ClaimFilter(mine=mine, theirs=tuple(sorted(set().union(*others) - mine)))


def claim(*, worker: str, holds: Callable[[str], bool] | None,
          served: ClaimFilter | None) -> list[Job]:
    """The jobs this worker runs now, as one batch (most often one job); [] when none it can
    run waits. By plan (jobs_claim) when batching or affinity is on, else the one statement.
    `served`: what it may claim, None for anything."""
    if claims_by_plan():
        return jobs_claim(worker=worker, holds=holds, served=served)
    job = job_claim_next(worker=worker, **_claim_args(served))
    return [] if job is None else [job]


def _claim_args(served: ClaimFilter | None) -> dict:
    if served is None:
        return {}
    return {"exclude_models": served.theirs, "can_run": served.can_run,
            "orphaned": served.orphaned}


# A worker passing on a message waits this long first: while the only workers that can run
# the waiting jobs are busy, an idle one would otherwise take the message back at once, in a
# loop, as fast as Redis answers.
PASS_ON_SECONDS = 1.0


def pass_on(served: ClaimFilter | None) -> bool:
    """After a claim found nothing this worker can run: send the message on (after
    PASS_ON_SECONDS) when a queued job waits for another worker taking jobs, so the message
    this one took does not leave it stranded until the reaper's next top-up. True if sent."""
    if served is None or not served.theirs:
        return False
    waiting = Job.objects.filter(status=Job.Status.QUEUED,
                                 recipe__model__name__in=served.theirs)
    if not waiting.exists():
        return False
    time.sleep(PASS_ON_SECONDS)
    dispatch(None)
    return True


def claims_by_plan() -> bool:
    """Whether workers claim by plan (jobs_claim): batching or affinity is on. Off, the
    claim is job_claim_next's one statement, as it always was."""
    return settings.STUDIO_BATCH_MAX > 1 or settings.STUDIO_AFFINITY_MAX_DEFER > 0


class _PassedTooOften(Exception):
    """A head the plan passes reached its bound meanwhile (another worker passed it too)."""


def jobs_claim(*, worker: str, holds: Callable[[str], bool] | None = None,
               served: ClaimFilter | None = None) -> list[Job]:
    """Claim what batching.plan_claim chooses from the current round: the jobs to run as one
    batch, in order; [] when none waits. `holds(source)`: whether this worker has that model;
    `served`: what it may claim (None: anything).

    1. Read the round's heads, unlocked, less those it may not claim, and plan.
    2. In one transaction (`_claim_plan`): count a pass on each head passed, planning again
       if one went past its bound meanwhile; start the leader (planning again without it if
       another worker holds its row) and the other members still free.
    3. After CLAIM_TRIES plans lost to other workers, or with no head of the round it may
       claim, claim as job_claim_next does.
    """
    exclude: set = set()
    for _ in range(CLAIM_TRIES):
        heads = round_heads(limit=ROUND_WINDOW, exclude=exclude)
        if not heads:
            if not exclude:
                return []
            break
        heads = _servable(heads, served)
        if not heads:
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
    job = job_claim_next(worker=worker, **_claim_args(served))
    return [] if job is None else [job]


def _servable(heads: list[Head], served: ClaimFilter | None) -> list[Head]:
    """Those of the heads this worker may claim: their recipes' models read again (one
    query), as a head keeps its model's source, not its name."""
    if served is None:
        return heads
    models = dict(Job.objects.filter(pk__in=[head.pk for head in heads])
                  .values_list("pk", "recipe__model"))
    return [head for head in heads if served.can_run({"model": models.get(head.pk) or {}})]


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
