"""The worker's sidecar: a process beside each worker process that takes a running job's steps
off the sampling loop. For every step it draws the preview, publishes it to the job's
websocket group (and keeps it as the job's latest), and writes the heartbeat, which also
tells whether the run may go on. Every k-th step it also keeps a frame of each image of the
batch on its own, for that image's page. A job that reveals one image of its batch (a
reproduction) gets previews and frames of that image alone: its siblings never leave here.

Why a process: done on a thread beside the loop, this work takes turns with sampling at the
interpreter lock; from the sidecar it costs a run about half as much (docs/performance.md,
tests/benchmarks/step_costs.py). The loop pays for pickling a few kilobytes into a socket,
and the work runs on another core.

The sidecar is forked from the worker process as that starts (generation/runner.preload) or
on its first job, so it starts at once and shares the imported code. It serves one job at
a time over a socket pair:

    worker -> sidecar   ("begin", job fields) ("step", step, total, preview, elapsed)... ("end",)
    sidecar -> worker   ("stop", job id) once, if the job was canceled or reaped meanwhile
                        ("failed", reason) once, if a step could not be reported
                        ("ended", frames) after the last step's messages and heartbeat,
                        frames: [{"step", "index", "image"}], index being the batch's

A batch of several jobs (docs/architecture.md §3.3) begins ("begin", {"every", "parts"}), a
part per job with its place: each job's watchers see its own images alone, each job has its
heartbeat, one that stops is reported no further; "ended" carries {job id: frames}.

and exits when the worker process goes away (its end of the socket closes).
"""

import base64
import functools
import itertools
import logging
import math
import os
import queue
import signal
import socket
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from django.db import DatabaseError, connection

from studio import forked_connections

from . import broadcast, engine, services
from .models import Job

log = logging.getLogger(__name__)

# Frames kept for the gallery's replay of the denoising: about this many per image.
TRAJECTORY_FRAMES = 24
# How long the worker waits for the sidecar to finish a job's steps. Past it (a sidecar
# stuck on a database that does not answer) the job is stored without its trajectory and
# the next job gets a new sidecar.
END_TIMEOUT = 30


class SidecarError(RuntimeError):
    """The sidecar could not report the job's steps; the run stops with this reason."""


# --- The worker's side --------------------------------------------------------------------


class Sidecar:
    """This worker process's sidecar, forked on first use and again if it died."""

    def __init__(self):
        self.pid: int | None = None
        self.conn: Connection | None = None

    def start(self) -> None:
        """Fork the sidecar unless it is running; `begin` does this too, when it must."""
        if not self._alive():
            self._start()

    def begin(self, job: Job) -> "SidecarRun":
        self.start()
        self.conn.send(("begin", {**_fields(job), "every": _every(job)}))
        return SidecarRun(self, [job])

    def begin_batch(self, jobs: list[Job], sizes: list[int]) -> "SidecarRun":
        """One run for jobs merged into one batch, in batch order, of `sizes` images each."""
        self.start()
        starts = itertools.accumulate(sizes, initial=0)
        parts = [{**_fields(job), "start": start, "size": size}
                 for job, start, size in zip(jobs, starts, sizes, strict=False)]
        self.conn.send(("begin", {"parts": parts, "every": _every(jobs[0])}))
        return SidecarRun(self, jobs)

    def close(self) -> None:
        """Stop the sidecar now, even one stuck in a write; the next job forks another."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.pid = None

    def _alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            done, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            done = self.pid
        if done:
            log.warning("the sidecar (pid %s) had exited; starting another", self.pid)
            self.pid = None
            self.conn.close()
            self.conn = None
        return self.pid is not None

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the sidecar
            status = 0
            try:
                ours.close()
                _serve(Connection(theirs.detach()))
            except BaseException:
                log.exception("the sidecar failed")
                status = 1
            finally:
                # Nothing of the worker's (atexit hooks, Celery's handlers) may run here.
                os._exit(status)
        theirs.close()
        self.pid, self.conn = pid, Connection(ours.detach())


def _fields(job: Job) -> dict:
    return {"job_id": str(job.pk), "attempt": job.attempt, "group": job.group_name,
            "reveals": job.reveals}


def _every(job: Job) -> int:
    return max(1, math.ceil(job.total_steps / TRAJECTORY_FRAMES))


class SidecarRun:
    """One job's steps (or one batch's), sent to the sidecar. ``step``, ``should_stop`` and
    ``end`` are called on the sampling thread (the engine calls ``on_step`` there); a socket
    carries both directions at once."""

    def __init__(self, sidecar: Sidecar, jobs: list[Job]):
        self.sidecar = sidecar
        self.conn = sidecar.conn
        self.jobs = {str(job.pk) for job in jobs}
        self.stopped: set[str] = set()  # the jobs canceled or reaped meanwhile
        self.failure: str | None = None

    def step(self, step: int, total: int, preview, elapsed: float) -> None:
        try:
            self.conn.send(("step", step, total, preview, elapsed))
        except OSError as exc:
            raise SidecarError(f"the worker's sidecar process stopped ({exc})") from exc
        except BaseException:
            # Interrupted on the sampling thread (a time limit), maybe halfway through the
            # message: the sidecar would misread the rest, so the next job gets a new one.
            self.sidecar.close()
            raise

    def should_stop(self) -> bool:
        """True once the sidecar found the job (every job of a batch) canceled or reaped;
        raises if it could not report a step."""
        try:
            while self.conn.poll():
                self._take(self.conn.recv())
        except (OSError, EOFError) as exc:
            raise SidecarError(f"the worker's sidecar process stopped ({exc})") from exc
        if self.failure is not None:
            raise SidecarError(self.failure)
        return self.stopped == self.jobs

    def has_stopped(self, job: Job) -> bool:
        return str(job.pk) in self.stopped

    def end(self) -> list[dict] | dict[str, list[dict]]:
        """Wait until every step sent is published and its heartbeat written; the kept
        trajectory frames, each of one image of the batch (of a batch of jobs: per job id).
        Past END_TIMEOUT, or if the sidecar died, none."""
        try:
            self.conn.send(("end",))
            while self.conn.poll(END_TIMEOUT):
                message = self.conn.recv()
                if message[0] == "ended":
                    return message[1]
                self._take(message)
            log.warning("the sidecar did not finish a job's steps in %s s", END_TIMEOUT)
        except (OSError, EOFError) as exc:
            log.warning("the sidecar stopped before the job's end: %s", exc)
        except BaseException:
            # Interrupted (a time limit): this job's messages would be read as the next
            # job's, so the next job gets a new sidecar.
            self.sidecar.close()
            raise
        self.sidecar.close()
        return []

    def _take(self, message: tuple) -> None:
        if message[0] == "stop":
            self.stopped.add(message[1])
        elif message[0] == "failed":
            self.failure = message[1]


@functools.cache
def get() -> Sidecar:
    """This worker process's sidecar (a worker runs one job at a time, from one thread)."""
    return Sidecar()


# --- The sidecar's side -------------------------------------------------------------------

def _serve(conn: Connection) -> None:
    """The sidecar's life: one job after another, until the worker process goes away."""
    # Ctrl-C reaches the whole process group; the sidecar ends with its worker instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    forked_connections.disown()
    try:
        while True:
            kind, fields = conn.recv()
            assert kind == "begin", kind
            if "parts" in fields:
                _BatchSteps(conn, **fields).serve()
            else:
                _JobSteps(conn, **fields).serve()
    except EOFError:
        pass
    finally:
        connection.close()


class _Inbox:
    """One job's messages from the worker, read on a thread as they arrive. The worker sends
    them from its sampling thread, so a send must never wait for this process: at real image
    sizes a step's preview arrays are a few hundred kilobytes, more than the socket holds,
    and a slow heartbeat (Postgres restarting) would otherwise hold up sampling."""

    def __init__(self, conn: Connection):
        self.messages: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._read, args=(conn,), name="sidecar-inbox",
                         daemon=True).start()

    def _read(self, conn: Connection) -> None:
        try:
            while True:
                message = conn.recv()
                self.messages.put(message)
                if message[0] == "end":
                    return  # the next job's "begin" is read by _serve
        except (EOFError, OSError):
            self.messages.put(("gone",))

    def get(self) -> tuple:
        message = self.messages.get()
        if message[0] == "gone":
            raise EOFError("the worker process went away")
        return message

    def empty(self) -> bool:
        return self.messages.empty()


@dataclass
class _JobSteps:
    """One job's steps in the sidecar: each published as it comes, the heartbeat written for
    the newest step whenever no newer one is waiting (a slow write is not repeated for steps
    it fell behind on)."""

    conn: Connection
    job_id: str
    attempt: int
    group: str
    every: int
    reveals: int | None = None  # Job.reveals: the only image of the batch shown, if one
    frames: list[dict] = field(default_factory=list)  # kept for the images' pages
    unwritten: int | None = None  # the newest step without a heartbeat
    stopped: bool = False  # the worker was told to stop
    failed: bool = False  # a step could not be reported
    db_failing: bool = False  # the last heartbeat write failed (logged once)

    def __post_init__(self):
        self.job = Job(pk=self.job_id, attempt=self.attempt)  # what job_progress reads

    def serve(self) -> None:
        inbox = _Inbox(self.conn)
        # The job left the queue: the jobs behind it moved up. Done here, beside the run's
        # first step, rather than in the worker before it.
        services.announce_queue()
        while (message := inbox.get())[0] == "step":
            self._report(*message[1:])
            if inbox.empty():
                self._beat()
        self._beat()  # the last step, if the end message was already waiting
        self.conn.send(("ended", self.frames))

    def _report(self, step: int, total: int, preview, elapsed: float) -> None:
        self.unwritten = step
        if self.failed:
            return  # the run is stopping; its remaining steps are not reported
        try:
            url = preview_url(preview, self.reveals) if preview is not None else None
            broadcast.send(self.group, {
                "type": "job.progress", "job": self.job_id, "attempt": self.attempt,
                "step": step, "total": total, "elapsed": round(elapsed, 3), "preview": url,
            }, keep=True)
            if url and (step % self.every == 0 or step == total):
                self._keep_frames(step, preview, url)
        except Exception as exc:  # handed to the worker, which stops the run with it
            log.exception("could not report step %s of job %s", step, self.job_id)
            self.failed = True
            self.conn.send(("failed", f"could not report step {step}: {exc}"))

    def _keep_frames(self, step: int, preview: engine.StepPreview, url: str) -> None:
        """A frame of each image shown, drawn alone: a frame of the whole batch would show
        its siblings on every image's page, and they may be private. The published preview
        serves when it is of one image already."""
        if self.reveals is not None:
            frames = {self.reveals: url}
        elif preview.batch_size == 1:
            frames = {0: url}
        else:
            frames = {index: preview_url(preview, index) for index in range(preview.batch_size)}
        self.frames.extend({"step": step, "index": index, "image": image}
                           for index, image in frames.items())

    def _beat(self) -> None:
        if self.unwritten is None:
            return
        try:
            running = services.job_progress(job=self.job, step=self.unwritten)
        except DatabaseError as exc:
            # Postgres restarting, say: the next step is written on a new connection. A job
            # whose heartbeat stayed away for good would be requeued by the reaper.
            if not self.db_failing:
                log.warning("heartbeat of job %s failed, retrying: %s", self.job_id, exc)
            self.db_failing = True
            connection.close()
            return
        self.db_failing = False
        self.unwritten = None
        if not running and not self.stopped:
            self.stopped = True
            self.conn.send(("stop", self.job_id))


@dataclass
class _BatchSteps:
    """A batch's steps, one part per job (a _JobSteps of its own): each step's preview cut
    to the part's images for its watchers and frames, a heartbeat per job. A part whose job
    stopped is reported no further; the others go on."""

    conn: Connection
    parts: list[dict]
    every: int

    def serve(self) -> None:
        jobs = [self._part(dict(part)) for part in self.parts]
        inbox = _Inbox(self.conn)
        services.announce_queue()
        while (message := inbox.get())[0] == "step":
            step, total, preview, elapsed = message[1:]
            for job, start, size in jobs:
                if not job.stopped:
                    own = None if preview is None else engine.preview_part(preview, start, size)
                    job._report(step, total, own, elapsed)
            if inbox.empty():
                self._beat(jobs)
        self._beat(jobs)
        self.conn.send(("ended", {job.job_id: job.frames for job, _, _ in jobs}))

    def _part(self, fields: dict) -> tuple["_JobSteps", int, int]:
        start, size = fields.pop("start"), fields.pop("size")
        return _JobSteps(self.conn, every=self.every, **fields), start, size

    @staticmethod
    def _beat(jobs) -> None:
        for job, _, _ in jobs:
            if not job.stopped:
                job._beat()


def preview_url(preview: engine.StepPreview, index: int | None = None) -> str:
    """The preview drawn (the whole batch, or its image at `index` alone), as a data URL of
    the format its options name."""
    picture = preview.render() if index is None else preview.render(index)
    data = base64.b64encode(picture).decode()
    return f"data:image/{preview.options.format.lower()};base64,{data}"
