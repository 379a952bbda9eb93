"""Celery tasks: adapters that claim, call a service and report (docs/architecture.md §2);
and the worker's signals: preload, and its entry in the worker registry."""

import socket

from celery import current_app, shared_task, signals
from django.conf import settings

from . import claims, metrics, runner, services, worker_registry
from .models import Job
from .workers import broker_backlog


# The job's row is its result: nobody reads a Celery result, and storing one (and, on
# submit, subscribing to it) would cost every job a few Redis round trips.
@shared_task(name=services.RUN_JOB, ignore_result=True, bind=True)
def run_job(self, job_id: str | None = None) -> str:
    """Run the next job in fair order that this worker can run (its models: the worker
    registry). `job_id` names the job this message was sent for; the worker may run another
    (docs/architecture.md §3), and every message runs at most one claim: one job, or with
    batching on one batch of jobs (the others' messages then find another job, or none). A
    message that finds only jobs for other workers' models is passed on (claims.pass_on).

    The job records the worker's node name (`gpu0@host`), the name the staff page lists
    among the workers that are up: a host runs one worker per GPU, so the host's name alone
    would not say which one has the job."""
    worker = self.request.hostname or socket.gethostname()  # no node name when run eagerly
    served = claims.claim_filter()
    jobs = claims.claim(worker=worker, holds=runner.holds, served=served)
    if not jobs:
        return "passed on" if claims.pass_on(served) else "no job waiting"
    outcome = runner.run(jobs[0]) if len(jobs) == 1 else runner.run_batch(jobs)
    worker_registry.publish()  # what it holds loaded may have changed
    return outcome


# This process's Celery node name (`gpu0@host`), as its main process starts: a pool process
# forked from it keeps it.
_node: str | None = None


@signals.celeryd_init.connect
def remember_node(sender=None, **kwargs) -> None:
    global _node
    _node = sender


def _runs_jobs() -> bool:
    return settings.STUDIO_QUEUE in current_app.amqp.queues.consume_from


@signals.worker_process_init.connect
def preload(**kwargs) -> None:
    """A worker process that runs jobs gets the default model ready before it takes one, so
    no job waits for it, then enters the worker registry. Celery waits
    CELERY_WORKER_PROC_ALIVE_TIMEOUT for this, and sends the process no task meanwhile. The
    scheduler's worker runs no jobs and skips it."""
    if not _runs_jobs():
        return
    if settings.STUDIO_WORKER_PRELOAD:
        runner.preload()
    worker_registry.start(_node or socket.gethostname(), holds=runner.holds)


@signals.worker_ready.connect
def watch_draining(sender=None, **kwargs) -> None:
    """The main process of a worker that runs jobs says when it drains (worker_registry)."""
    if _runs_jobs():
        worker_registry.watch_draining(sender)


@signals.worker_shutting_down.connect
def shutting_down(**kwargs) -> None:
    worker_registry.shutting_down()


@signals.worker_shutdown.connect
def withdraw(sender=None, **kwargs) -> None:
    """A worker stopped cleanly leaves the registry at once, not STALE_SECONDS later."""
    if _node is not None:
        worker_registry.withdraw(_node)


@shared_task(name="generation.reap_jobs")
def reap_jobs() -> dict:
    report = services.jobs_reap(broker_backlog=broker_backlog())
    # Their watchers would otherwise wait on a worker that died: told the job ended, or that
    # it waits in the queue again (the state says where).
    jobs = list(Job.objects.filter(pk__in=report.ended + report.returned))
    # Counted here, once: the reaper's own conditional update ended them.
    metrics.jobs_ended([job for job in jobs if str(job.pk) in report.ended])
    for job in jobs:
        runner.announce(job)
    return vars(report)


from .learn_tasks import forward_process  # noqa: E402,F401  (registers the /learn/ task)
