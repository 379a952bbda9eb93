"""Celery tasks: adapters that claim, call a service and report (DESIGN §1)."""

import socket

from celery import shared_task

from . import runner, services
from .models import Job
from .workers import broker_backlog

WORKER_NAME = socket.gethostname()


# The job's row is its result: nobody reads a Celery result, and storing one (and, on
# submit, subscribing to it) would cost every job a few Redis round trips.
@shared_task(name="generation.run_job", ignore_result=True)
def run_job(job_id: str | None = None) -> str:
    """Run the next job in fair order. `job_id` names the job this message was sent for;
    the worker may run another (DESIGN §3), and every message runs at most one job."""
    job = services.job_claim_next(worker=WORKER_NAME)
    if job is None:
        return "no job waiting"
    return runner.run(job)


@shared_task(name="generation.reap_jobs")
def reap_jobs() -> dict:
    report = services.jobs_reap(broker_backlog=broker_backlog())
    for job in Job.objects.filter(pk__in=report.ended):
        runner.announce(job)  # their watchers would otherwise wait for a worker that died
    return vars(report)
