"""Celery tasks: adapters that claim, call a service and report (docs/architecture.md §2)."""

import socket

from celery import current_app, shared_task, signals
from django.conf import settings

from . import claims, runner, services
from .models import Job
from .workers import broker_backlog


# The job's row is its result: nobody reads a Celery result, and storing one (and, on
# submit, subscribing to it) would cost every job a few Redis round trips.
@shared_task(name=services.RUN_JOB, ignore_result=True, bind=True)
def run_job(self, job_id: str | None = None) -> str:
    """Run the next job in fair order. `job_id` names the job this message was sent for;
    the worker may run another (docs/architecture.md §3), and every message runs at most one
    claim: one job, or with batching on one batch of jobs (the others' messages then find
    another job, or none).

    The job records the worker's node name (`gpu0@host`), the name the staff page lists
    among the workers that are up: a host runs one worker per GPU, so the host's name alone
    would not say which one has the job."""
    worker = self.request.hostname or socket.gethostname()  # no node name when run eagerly
    if claims.claims_by_plan():  # batching or model affinity (docs/architecture.md §3.3)
        jobs = claims.jobs_claim(worker=worker, holds=runner.holds)
        if not jobs:
            return "no job waiting"
        return runner.run(jobs[0]) if len(jobs) == 1 else runner.run_batch(jobs)
    job = services.job_claim_next(worker=worker)
    if job is None:
        return "no job waiting"
    return runner.run(job)


@signals.worker_process_init.connect
def preload(**kwargs) -> None:
    """A worker process that runs jobs gets the default model ready before it takes one, so
    no job waits for it. Celery waits CELERY_WORKER_PROC_ALIVE_TIMEOUT for this, and sends
    the process no task meanwhile. The scheduler's worker runs no jobs and skips it."""
    runs_jobs = settings.STUDIO_QUEUE in current_app.amqp.queues.consume_from
    if settings.STUDIO_WORKER_PRELOAD and runs_jobs:
        runner.preload()


@shared_task(name="generation.reap_jobs")
def reap_jobs() -> dict:
    report = services.jobs_reap(broker_backlog=broker_backlog())
    # Their watchers would otherwise wait on a worker that died: told the job ended, or that
    # it waits in the queue again (the state says where).
    for job in Job.objects.filter(pk__in=report.ended + report.returned):
        runner.announce(job)
    return vars(report)
