"""Job rules: the only place they live (docs/architecture.md §3). Views, the API, the websocket
consumer and the Celery task call these.

Every state change is one conditional UPDATE (`... WHERE status = 'queued'`), so a message
delivered twice, a reaper racing a worker, or two workers racing each other change a job once.
"""

import functools
import itertools
import logging
import math
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Count, Exists, F, Min, OuterRef, Q, Subquery
from django.utils import timezone

from studio.services import user_lock

from . import broadcast
from .models import Job, Output
from .signals import job_succeeded

log = logging.getLogger(__name__)


class LimitExceeded(Exception):
    """A per-user limit refused a submission; says which, and when to retry."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


def get_job_for_user(*, user, job_id) -> Job | None:
    """The one door to a job: None (a 404) unless the user owns it or is staff."""
    if not getattr(user, "is_authenticated", False):
        return None
    jobs = Job.objects.all() if user.is_staff else Job.objects.filter(owner=user)
    return jobs.filter(pk=job_id).first()


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


# The worker decides these from its own settings (runner.py); a recipe's are never obeyed.
WORKER_DECIDES = ("threads", "device", "dtype")


def job_submit(*, user, recipe: dict, reveals: int | None = None) -> Job:
    """Queue an already-validated recipe, dispatched once committed. The limits are checked
    and the job inserted under a lock on the user's row, so two submits cannot both take the
    last free place (held to the end of the caller's transaction). `reveals`: Job.reveals."""
    recipe = {**recipe, **dict.fromkeys(WORKER_DECIDES)}
    with transaction.atomic():
        user_lock(user)
        check_limits(user)
        job = Job.objects.create(owner=user, recipe=recipe, total_steps=recipe["steps"],
                                 reveals=reveals)
        transaction.on_commit(lambda: dispatch(job.pk))
        # A user with fewer turns behind them goes ahead of busier users' later jobs.
        transaction.on_commit(announce_queue)
    return job


def dispatch(job_id) -> None:
    from .tasks import run_job

    run_job.apply_async(args=[str(job_id)], queue=settings.STUDIO_QUEUE)


# --- Claim, progress, finish --------------------------------------------------------------


def fair_queue():
    """Queued jobs in the order they should run.

    Round-robin across users: the user served least recently (whose latest job started
    longest ago, or never) goes first, oldest job first within a user. One user queueing 20
    jobs gets one turn per round like everyone else. Every worker claims from the head of
    this order, whatever job its message named, so the order holds with any number of workers.

    Each user's oldest job comes before every user's later ones. One claim at a time, that
    changes nothing: the head is a user's oldest job either way. But a worker claiming while
    another holds the head's row (not committed yet, so its owner's turn is not recorded)
    skips that row, and then takes the next user's oldest job, not the same user's next one.
    """
    # The newest start, one step back along the (owner, started_at) index. As a MAX()
    # grouped by owner, Postgres read every job the owner ever started, for each queued job:
    # with 50,000 finished jobs a claim took 6.4 ms with 50 queued and 186 ms with 2,000,
    # and now 1.3 and 10.3 ms (tests/benchmarks/queue_scale.py).
    last_served = (
        Job.objects.filter(owner=OuterRef("owner"), started_at__isnull=False)
        .order_by("-started_at")
        .values("started_at")[:1]
    )
    older = Job.objects.filter(
        owner=OuterRef("owner"), status=Job.Status.QUEUED, queued_at__lt=OuterRef("queued_at")
    )
    return (
        Job.objects.filter(status=Job.Status.QUEUED)
        .annotate(last_served=Subquery(last_served), later=Exists(older))
        # pk last: ties broken the same way by every query, the claim's and start_order's
        .order_by("later", F("last_served").asc(nulls_first=True), "queued_at", "pk")
    )


def job_claim_next(*, worker: str) -> Job | None:
    """Move the next job in fair order from queued to running, or return None if none waits.

    One statement locks the head of the fair queue (skipping a row another worker holds),
    starts it and returns it. Every job waits for its claim: as a SELECT and an UPDATE, each
    built by the ORM, it took 6.2 ms on the 2-core machine, and this 3.2-3.5 ms (medians of
    35 claims, the two run alternately).
    """
    now = timezone.now()
    sql, head_params = claim_statement()
    # Django compiles a select_for_update only inside a transaction, even as a subquery.
    with transaction.atomic():
        started = Job.objects.raw(
            sql, [Job.Status.RUNNING, worker, now, now, *head_params, Job.Status.QUEUED]
        )
        return next(iter(started), None)


@functools.cache
def claim_statement() -> tuple[str, tuple]:
    """The claim's SQL and its fair-queue head's parameters, compiled once per process: the
    order never changes, and building it took a millisecond of every claim."""
    head = fair_queue().select_for_update(skip_locked=True, of=("self",)).values("pk")[:1]
    with transaction.atomic():
        head_sql, head_params = head.query.sql_with_params()
    sql = (
        f"UPDATE {Job._meta.db_table} SET status = %s, attempt = attempt + 1, "  # noqa: S608
        "worker = %s, started_at = %s, heartbeat = %s, step = 0, error = '' "
        f"WHERE id = ({head_sql}) AND status = %s RETURNING *"
    )
    return sql, head_params


# Every sampling step of every job writes this, from the worker's sidecar process. Django
# building the UPDATE took 364 us of interpreter time a call against 111 us for the statement
# alone. When the heartbeat was written from a thread beside the loop (which waited on the
# interpreter lock meanwhile), 20 steps took 1.12-1.14x the bare call with the ORM heartbeat
# and 1.08-1.10x with this one (tests/benchmarks/step_costs.py, previews on).
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


def job_latest_step(job: Job) -> dict | None:
    """The running job's latest step as its watchers got it (with its preview), if this
    attempt has made one: the worker keeps it in Redis as it publishes it. Before the first
    step, the state message saying the run waits for its model, if it does. A reaped attempt
    that has not stopped yet may still publish; its steps are not this attempt's."""
    if job.status != Job.Status.RUNNING:
        return None
    latest = broadcast.latest(job.group_name)
    if latest is None or latest.get("attempt") != job.attempt:
        return None
    return latest


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


# --- Reads for pages ----------------------------------------------------------------------


def jobs_for_page(*, user, finished: int = 10) -> list[Job]:
    """The user's jobs for "Recent jobs", newest first: every unfinished one (each can still be
    canceled there, and at most STUDIO_MAX_QUEUED_PER_USER wait) and the latest `finished`."""
    jobs = Job.objects.filter(owner=user).prefetch_related("outputs").order_by("-queued_at")
    unfinished = list(jobs.exclude(status__in=Job.FINISHED))
    ended = list(jobs.filter(status__in=Job.FINISHED)[:finished])
    return sorted([*unfinished, *ended], key=lambda job: job.queued_at, reverse=True)


def queue_position(job: Job) -> int | None:
    """How many queued jobs will start before this one (0: it is next), or None if it is
    not queued. For the queue as it is now; later arrivals can change it. Workers claiming
    at the same moment keep to it too: each skips the rows the others hold, which are the
    jobs before its own turn (see fair_queue)."""
    if job.status != Job.Status.QUEUED:
        return None
    order = start_order()
    return order.index(job.pk) if job.pk in order else None


def start_order() -> list:
    """The queued jobs' ids in the order workers will start them, as the queue stands.

    Not `fair_queue`'s order: that lists all of a user's jobs together, and only its head is
    claimed. A claim makes its owner the user served last, so the users take turns in the
    order they first appear there, one job each per round, each user's oldest first.
    """
    turns: dict = {}  # owner -> their queued job ids, oldest first; in turn order
    for pk, owner in fair_queue().values_list("pk", "owner_id"):
        turns.setdefault(owner, []).append(pk)
    rounds = itertools.zip_longest(*turns.values())
    return [pk for jobs in rounds for pk in jobs if pk is not None]


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


def queue_summary() -> list[dict]:
    """Queued and running jobs per user, for the staff page."""
    rows = (
        Job.objects.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING])
        .values("owner__username")
        .annotate(
            queued=Count("pk", filter=Q(status=Job.Status.QUEUED)),
            running=Count("pk", filter=Q(status=Job.Status.RUNNING)),
        )
        .order_by("-queued", "owner__username")
    )
    return list(rows)
