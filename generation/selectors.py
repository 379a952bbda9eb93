"""Job reads: the one door to a job, the queue's order, what a job's state shows, the pages'
listings. They change nothing; the writes live in services.py (docs/architecture.md §3)."""

import itertools
from dataclasses import dataclass

from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Subquery

from . import broadcast
from .batching import Head
from .models import Job, Output


def get_job_for_user(*, user, job_id) -> Job | None:
    """The one door to a job: None (a 404) unless the user owns it or is staff."""
    if not getattr(user, "is_authenticated", False):
        return None
    jobs = Job.objects.all() if user.is_staff else Job.objects.filter(owner=user)
    return jobs.filter(pk=job_id).first()


# --- The queue's order --------------------------------------------------------------------


def fair_queue() -> QuerySet[Job]:
    """Queued jobs in the order they should run (docs/architecture.md §3.3).

    Round-robin across users: the user served least recently (whose latest job started
    longest ago, or never) goes first, oldest job first within a user. One user queueing 20
    jobs gets one turn per round like everyone else. Every worker claims from the head of
    this order (services.job_claim_next), whatever job its message named, so the order holds
    with any number of workers.

    Each user's oldest job comes before every user's later ones. One claim at a time, that
    changes nothing: the head is a user's oldest job either way. But a worker claiming while
    another holds the head's row (not committed yet, so its owner's turn is not recorded)
    skips that row, and then takes the next user's oldest job, not the same user's next one.
    """
    # The newest start, one step back along the (owner, started_at) index: a MAX() grouped
    # by owner would read every job the owner ever started, for each queued job
    # (docs/performance.md has the figures, from tests/benchmarks/queue_scale.py).
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


def round_heads(*, limit: int, exclude=()) -> list[Head]:
    """The current round: each user's oldest queued job, in fair order, the first `limit` of
    them, less `exclude` (heads another worker was claiming a moment ago). A user's later
    jobs are never here, so no claim takes two of one user's jobs (batching.plan_claim)."""
    rows = (
        fair_queue().filter(later=False).exclude(pk__in=exclude)
        .values_list("pk", "owner_id", "recipe", "reveals", "deferred")[:limit]
    )
    return [Head.from_row(*row) for row in rows]


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


def queue_position(job: Job) -> int | None:
    """How many queued jobs will start before this one (0: it is next), or None if it is
    not queued. For the queue as it is now; later arrivals can change it. Workers claiming
    at the same moment keep to it too: each skips the rows the others hold, which are the
    jobs before its own turn (see fair_queue)."""
    if job.status != Job.Status.QUEUED:
        return None
    order = start_order()
    return order.index(job.pk) if job.pk in order else None


# --- One job, as its watchers see it ------------------------------------------------------


@dataclass(frozen=True)
class JobView:
    """A job and what its state shows beyond its own row; presenters.job_state shows it."""

    job: Job
    queue_position: int | None
    outputs: list[Output]


def job_view(job: Job, *, outputs: list[Output] | None = None) -> JobView:
    """Read what the job's state shows: its place if it is queued, its outputs if it
    succeeded (`outputs`: those the caller has already, as the worker that stored them)."""
    if job.status != Job.Status.SUCCEEDED:
        outputs = []
    elif outputs is None:
        outputs = list(job.outputs.all())
    return JobView(job=job, queue_position=queue_position(job), outputs=outputs)


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


# --- Pages --------------------------------------------------------------------------------


def jobs_for_page(*, user, finished: int = 10) -> list[Job]:
    """The user's jobs for "Recent jobs", newest first: every unfinished one (each can still be
    canceled there, and at most STUDIO_MAX_QUEUED_PER_USER wait) and the latest `finished`."""
    jobs = Job.objects.filter(owner=user).prefetch_related("outputs").order_by("-queued_at")
    unfinished = list(jobs.exclude(status__in=Job.FINISHED))
    ended = list(jobs.filter(status__in=Job.FINISHED)[:finished])
    return sorted([*unfinished, *ended], key=lambda job: job.queued_at, reverse=True)


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
