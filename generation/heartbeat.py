"""A running job's heartbeat, written from a thread of its own (DESIGN §3)."""

import logging
import threading

from django.db import DatabaseError, connection

from . import services
from .models import Job

log = logging.getLogger(__name__)


class Heartbeat:
    """Records a running job's latest step and heartbeat beside the sampling loop.

    The loop only hands over the step number; this thread writes it, one conditional UPDATE
    that also says whether the run may go on (not if it was canceled, or reaped and given to
    another attempt). The loop never waits on the database, and when a write is slower than a
    step, the next write just carries the newer step. The price: a cancel is seen one write
    later, so a run stops within a step or two of it.
    """

    def __init__(self, job: Job):
        self.job = job
        self.keep_running = True
        self._latest: int | None = None
        self._stopping = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job.pk}", daemon=True)
        self._thread.start()

    def beat(self, step: int) -> None:
        with self._wake:
            self._latest = step
            self._wake.notify()

    def stop(self) -> None:
        """Write the last step handed over, then end the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    def _run(self) -> None:
        failing = False
        try:
            while (step := self._next()) is not None:
                try:
                    running = services.job_progress(job=self.job, step=step)
                except DatabaseError as exc:
                    # Postgres restarting, say: the next step is written on a new connection.
                    # A job whose heartbeat stayed away for good would be requeued by the
                    # reaper while it still ran here.
                    if not failing:
                        log.warning("heartbeat of job %s failed, retrying: %s", self.job.pk, exc)
                    failing = True
                    connection.close()
                    continue
                failing = False
                if not running:
                    self.keep_running = False
        except Exception:
            # No heartbeat means the reaper will requeue the job: loud, not lost.
            log.exception("heartbeat of job %s failed", self.job.pk)
        finally:
            connection.close()  # this thread's own database connection

    def _next(self) -> int | None:
        with self._wake:
            while self._latest is None and not self._stopping:
                self._wake.wait()
            step, self._latest = self._latest, None
            return step
