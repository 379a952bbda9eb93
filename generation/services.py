"""Job rules: the only place they live (docs/architecture.md §3). Views, the API, the websocket
consumer and the Celery task call these. The reads (the door to a job, the queue's order,
listings) are in selectors.py.

Every state change is one conditional UPDATE (`... WHERE status = 'queued'`), so a message
delivered twice, a reaper racing a worker, or two workers racing each other change a job once.
"""

import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import BooleanField, Count, Min, Q
from django.db.models.expressions import RawSQL
from django.utils import timezone

from studio.celery import app
from studio.services import user_lock

from . import broadcast, metrics, worker_registry
from .engine.inputs import steps_run
from .inputs import store
from .job_request import Refused
from .models import Job, Output
from .selectors import fair_queue, start_order
from .signals import job_succeeded

log = logging.getLogger(__name__)


class LimitExceeded(Exception):
    """A per-user limit refused a submission; says which, and when to retry."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


# --- Submit -------------------------------------------------------------------------------


def check_limits(user) -> None:
    """Raise LimitExceeded when the user may not queue another job now."""
    now = timezone.now()
    window = now - timedelta(seconds=60)
    queued, recent = Q(status=Job.Status.QUEUED), Q(queued_at__gt=window)
    # One query for both limits: it runs before every job is dispatched.
    counts = (
        Job.objects.filter(queued | recent, owner=user)
        .aggregate(
            queued=Count("pk", filter=queued),
            recent=Count("pk", filter=recent),
            oldest_recent=Min("queued_at", filter=recent),
        )
    )
    limit = settings.STUDIO_MAX_QUEUED_PER_USER
    if counts["queued"] >= limit:
        raise LimitExceeded(
            f"You already have {counts['queued']} jobs waiting (the limit is {limit}). "
            "Submit again when one of them has started.",
            retry_after=5,
        )
    per_minute = settings.STUDIO_MAX_SUBMITS_PER_MINUTE
    if counts["recent"] >= per_minute:
        wait = math.ceil(
            (counts["oldest_recent"] + timedelta(seconds=60) - now).total_seconds()
        )
        raise LimitExceeded(
            f"You submitted {counts['recent']} jobs in the last minute "
            f"(the limit is {per_minute}). Try again in {max(wait, 1)} s.",
            retry_after=max(wait, 1),
        )


class NoWorkerForModel(Refused):
    """No worker that is up can load the job's model (generation/worker_registry.py): a
    Refused naming the field `model`, which every door shows as it shows its other fields'."""

    def __init__(self, message: str):
        super().__init__({"model": message})
        self.message = message

    def __str__(self) -> str:
        return self.message


def check_model_served(recipe: dict) -> None:
    """Raise NoWorkerForModel when workers are up and none can load the recipe's model. With
    none up the job is queued and waits (they may be restarting), and its state says so."""
    name = (recipe.get("model") or {}).get("name")
    if name and (reason := worker_registry.refusal(name)):
        raise NoWorkerForModel(reason)


# The worker decides these from its own settings (runner.py); a recipe's are never obeyed.
WORKER_DECIDES = ("threads", "device", "dtype")


def job_submit(*, user, recipe: dict, reveals: int | None = None,
               inputs: Sequence[dict] = ()) -> Job:
    """Queue an already-validated recipe, dispatched once committed. The limits are checked
    and the job inserted under a lock on the user's row, so two submits cannot both take the
    last free place (held to the end of the caller's transaction). `reveals`: Job.reveals.
    `inputs`: the images the recipe starts from, each as generation.inputs.store takes them,
    stored for the user (once per image) and kept with the job, in the same transaction.
    Its progress counts to the steps the recipe runs (engine.steps_run), not its `steps`.
    Raises NoWorkerForModel before anything is stored when no worker up can load its model
    (one Redis read), or LimitExceeded."""
    recipe = {**recipe, **dict.fromkeys(WORKER_DECIDES)}
    check_model_served(recipe)
    with transaction.atomic():
        user_lock(user)
        check_limits(user)
        job = Job.objects.create(owner=user, recipe=recipe, total_steps=steps_run(recipe),
                                 reveals=reveals)
        if inputs:
            job.inputs.set([store(owner=user, **fields) for fields in inputs])
        transaction.on_commit(lambda: dispatch(job.pk))
        # A user with fewer turns behind them goes ahead of busier users' later jobs.
        transaction.on_commit(announce_queue)
    return job


# The task that runs the next job (generation/tasks.py). Sent by name: the task calls these
# services, so importing it here would close a circle of imports.
RUN_JOB = "generation.run_job"


def dispatch(job_id) -> None:
    """Send a run_job message on this deployment's queue (a test run has its own, set after
    the settings' routes were read). No result is kept, as the task declares: a sender that
    has not imported the task would otherwise subscribe to one in Redis on every submit."""
    app.send_task(RUN_JOB, args=[str(job_id)], queue=settings.STUDIO_QUEUE, ignore_result=True)


# --- Claim, progress, finish --------------------------------------------------------------


def job_claim_next(*, worker: str, exclude_models: Sequence[str] = (),
                   can_run: Callable[[dict], bool] | None = None,
                   orphaned: Callable[[], Sequence[str]] | None = None) -> Job | None:
    """Move the next job in fair order from queued to running, or return None if none waits.

    One statement locks the head of the fair queue (skipping a row another worker holds),
    starts it and returns it. Every job waits for its claim, and a SELECT and an UPDATE, each
    built by the ORM, took about twice as long (docs/performance.md).

    A worker with a model list (claims.ClaimFilter) passes the jobs of `exclude_models` (other
    workers' models) and checks the job it claimed with `can_run(recipe)`: one it cannot run
    goes back untouched (the claim rolled back) and the claim tries again without its model,
    and without every model `orphaned()` names (the queued jobs' models no worker can run
    here), read only then: most claims never meet such a job.
    """
    now = timezone.now()
    sql, head_params = claim_statement()
    excluded = list(exclude_models)
    for _ in range(MODEL_PASSES):
        params = [excluded if param is NO_MODELS else param for param in head_params]
        # Django compiles a select_for_update only inside a transaction, even as a subquery.
        with transaction.atomic():
            started = Job.objects.raw(
                sql, [Job.Status.RUNNING, worker, now, now, *params, Job.Status.QUEUED]
            )
            job = next(iter(started), None)
            if job is None or can_run is None or can_run(job.recipe):
                return job
            transaction.set_rollback(True)
        excluded = [*excluded, (job.recipe.get("model") or {}).get("name")]
        if orphaned is not None:
            excluded += [name for name in orphaned() if name not in excluded]
            orphaned = None
    return None


# How many models a claim passes over, one by one, before it gives up: jobs of models no
# worker lists and this one cannot load.
MODEL_PASSES = 5
# The claim's parameter for the model names it passes: none, unless job_claim_next puts
# the names in its place (found by identity: the statement is compiled once).
NO_MODELS: list[str] = []


@functools.cache
def claim_statement() -> tuple[str, tuple]:
    """The claim's SQL and its fair-queue head's parameters, compiled once per process: the
    order never changes, and building it took a millisecond of every claim. One parameter
    is NO_MODELS, the model names the claim passes (an array): run as it is, it passes none."""
    model_name = f"({Job._meta.db_table}.recipe -> 'model' ->> 'name')"
    passed = RawSQL(  # noqa: S611 (the names come as a parameter)
        f"COALESCE({model_name} = ANY(%s), false)", (NO_MODELS,),
        output_field=BooleanField(),
    )
    head = (
        fair_queue().alias(passed=passed).filter(passed=False)
        .select_for_update(skip_locked=True, of=("self",)).values("pk")[:1]
    )
    with transaction.atomic():
        head_sql, head_params = head.query.sql_with_params()
    sql = (
        f"UPDATE {Job._meta.db_table} SET status = %s, attempt = attempt + 1, "  # noqa: S608
        "worker = %s, started_at = %s, heartbeat = %s, step = 0, error = '' "
        f"WHERE id = ({head_sql}) AND status = %s RETURNING *"
    )
    return sql, head_params


# Every sampling step of every job writes this, from the worker's sidecar process: written by
# hand, as Django building the UPDATE cost about three times the statement's own interpreter
# time (docs/performance.md, tests/benchmarks/step_costs.py).
PROGRESS_SQL = (
    f"UPDATE {Job._meta.db_table} SET step = %s, heartbeat = %s "  # noqa: S608 (a model's table)
    "WHERE id = %s AND status = %s AND attempt = %s AND NOT cancel_requested"
)


def job_progress(*, job: Job, step: int) -> bool:
    """Record a step and a heartbeat. Returns False when the run must stop: the job was
    canceled, or it was reaped and is no longer this attempt's to run."""
    with connection.cursor() as cursor:
        cursor.execute(
            PROGRESS_SQL, [step, timezone.now(), job.pk, Job.Status.RUNNING, job.attempt]
        )
        return cursor.rowcount == 1


def job_finish(*, job: Job, outputs: list[dict], timings: dict) -> list[Output] | None:
    """Store the outputs and mark the job succeeded, atomically and only for the attempt
    that is still running it. Returns the stored outputs, or None (storing nothing) if the
    job is no longer this attempt's. `job` then holds what was set, as after a re-read."""
    finished = {
        "status": Job.Status.SUCCEEDED, "finished_at": timezone.now(), "step": job.total_steps,
        "timings": timings,
    }
    with transaction.atomic():
        changed = Job.objects.filter(
            pk=job.pk, status=Job.Status.RUNNING, attempt=job.attempt
        ).update(**finished)
        if changed != 1:
            return None
        stored = [Output.objects.create(job=job, **fields) for fields in outputs]
        job_succeeded.send(sender=Job, job=job, outputs=stored)
    for name, value in finished.items():
        setattr(job, name, value)
    return stored


def job_fail(*, job: Job, reason: str) -> bool:
    changed = Job.objects.filter(
        pk=job.pk, status=Job.Status.RUNNING, attempt=job.attempt
    ).update(status=Job.Status.FAILED, finished_at=timezone.now(), error=reason)
    return changed == 1


def job_mark_canceled(*, job: Job) -> bool:
    """The worker stopped a run because cancel was requested."""
    changed = Job.objects.filter(
        pk=job.pk, status=Job.Status.RUNNING, attempt=job.attempt
    ).update(status=Job.Status.CANCELED, finished_at=timezone.now())
    return changed == 1


class NotJobOwner(Exception):
    """Staff may look at anyone's job, but only its owner cancels it."""


def job_cancel(*, job: Job, actor) -> str:
    """Cancel a job for its owner: a queued job at once, a running one within a step.
    Refreshes `job` and returns its status after the request."""
    if job.owner_id != actor.pk:
        raise NotJobOwner("Only the job's owner can cancel it.")
    queued = Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED)
    if queued.update(status=Job.Status.CANCELED, finished_at=timezone.now()):
        metrics.queued_job_canceled()
        announce_queue()
    else:
        Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(cancel_requested=True)
    job.refresh_from_db()
    return job.status


# --- Reaper -------------------------------------------------------------------------------


@dataclass
class ReapReport:
    requeued: int = 0
    failed: int = 0
    canceled: int = 0
    resent: int = 0
    # Jobs the reaper finished, whose watchers should hear of it.
    ended: list = field(default_factory=list)
    # Jobs it put back in the queue, whose watchers still see the lost run's last step.
    returned: list = field(default_factory=list)


def jobs_reap(*, broker_backlog: int) -> ReapReport:
    """Recover from dead workers and lost messages (docs/architecture.md §3).

    1. A running job whose heartbeat is older than STUDIO_HEARTBEAT_TIMEOUT goes back to
       queued while it has attempts left, else fails with the reason; one its owner asked to
       cancel is canceled.
    2. Every queued job needs a message in the broker; `broker_backlog` is how many wait
       there now. Messages name no job that must run (workers claim in fair order), so the
       reaper just tops the broker up to the number of queued jobs.
    """
    report = ReapReport()
    stale = timezone.now() - timedelta(seconds=settings.STUDIO_HEARTBEAT_TIMEOUT)
    for job in Job.objects.filter(status=Job.Status.RUNNING, heartbeat__lt=stale):
        running = Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, attempt=job.attempt)
        if job.cancel_requested:
            changed = running.update(status=Job.Status.CANCELED, finished_at=timezone.now())
            report.canceled += changed
        elif job.attempt < settings.STUDIO_MAX_ATTEMPTS:
            if running.update(status=Job.Status.QUEUED, worker="", step=0):
                report.requeued += 1
                report.returned.append(str(job.pk))
            continue
        else:
            reason = (
                f"The worker running this job stopped responding, {job.attempt} times. "
                "It was not retried again."
            )
            changed = running.update(
                status=Job.Status.FAILED, finished_at=timezone.now(), error=reason
            )
            report.failed += changed
        if changed:
            report.ended.append(str(job.pk))
    if report.requeued:
        announce_queue()
    queued = Job.objects.filter(status=Job.Status.QUEUED).count()
    for _ in range(max(queued - broker_backlog, 0)):
        dispatch(None)
        report.resent += 1
    if report.requeued or report.ended or report.resent:
        log.warning("reaper: %s", report)
    return report


# The advisory lock key that serializes announce_queue ("studio" in ASCII).
ANNOUNCE_LOCK = 0x73747564696F


def announce_queue() -> None:
    """Tell the watchers of every queued job its place, after the order changed: a job was
    submitted, started (the sidecar calls this as its run begins), canceled or requeued.
    One query and one Redis round trip, however many watch. Best effort, like progress: a
    watcher who missed one hears the next, and the job's state carries its place too."""
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                # One announcer at a time, each reading the order after the one before it
                # published: else an older order, read first and published last, would stay
                # on the pages until the next change.
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ANNOUNCE_LOCK])
            messages = [
                (Job.group_for(pk),
                 {"type": "job.queue", "job": str(pk), "queue_position": place})
                for place, pk in enumerate(start_order())
            ]
            if messages:
                broadcast.send_many(messages)
    except Exception as exc:  # the change it reports is made; only the news is lost
        log.warning("could not announce the queue's order: %s", exc)
        if isinstance(exc, DatabaseError) and not connection.in_atomic_block:
            connection.close()  # broken, maybe: the caller's next query opens a new one
