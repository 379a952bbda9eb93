"""Studio's figures for Prometheus: how long jobs wait and run, how long a step takes, how jobs
end. Each is recorded in Redis by the process where it happens, and read by the web process
when /metrics is scraped (generation/metrics_view.py).

Why Redis: the web server, the Celery workers and their sidecars are separate processes, maybe
on separate hosts, so a prometheus_client metric held in a worker's memory would never reach
the web's /metrics (its multiprocess mode needs a directory every process shares). Every
process reaches Redis, and Postgres holds the rest (the queue's length, read at scrape time).

A histogram is a Redis hash per label set: one field per bucket, counting the observations
that fell in that bucket alone (an observation increments one field, not every bucket above
it), and `sum`. Scraping sums them into Prometheus's cumulative buckets. Counters only ever
go up; if Redis loses them (a restart without persistence) they start again from 0, which
Prometheus's rate() reads as a counter reset. A job is counted once, where the conditional
UPDATE that ended it changed its row (services.py): the worker (runner.py) for the jobs it
ran, the reaper for the jobs it failed or canceled, job_cancel for a job canceled while queued.

Beside the totals, each minute's observations go in a hash of their own, kept for an hour: the
staff queue page's "last hour" figures (metrics_view.staff_figures).

Recording is best effort, like progress: a Redis that does not answer costs a warning, never a
job.
"""

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import redis
from django.conf import settings
from prometheus_client.utils import floatToGoString
from redis.backoff import NoBackoff
from redis.retry import Retry

from .models import Job

log = logging.getLogger(__name__)

INF = math.inf
# Upper bounds, in seconds. Waits run from an idle worker's claim to a queue of hours; a run
# ends by the soft time limit (STUDIO_JOB_SOFT_TIME_LIMIT, 25 minutes by default); a step takes
# milliseconds for a tiny model on a GPU and seconds for SDXL on a CPU.
BUCKETS = {
    "wait": (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, INF),
    "run": (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, INF),
    "step": (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, INF),
}
OUTCOMES = tuple(str(status) for status in Job.FINISHED)  # succeeded, failed, canceled
# The staff page's window, kept a minute at a time; a minute's hash outlives the window a bit.
RECENT_MINUTES = 60
RECENT_TTL = (RECENT_MINUTES + 2) * 60


@dataclass(frozen=True)
class Histogram:
    """A histogram as Prometheus reads it: cumulative counts per upper bound (the last one
    +Inf, which is the count), and the sum of the observations."""

    buckets: list[tuple[float, int]]
    total: float

    @property
    def count(self) -> int:
        return self.buckets[-1][1]

    def quantile(self, q: float) -> float | None:
        """The q-quantile estimated as Prometheus's histogram_quantile does: linear within
        the bucket it falls in; the highest finite bound if it falls above it. None if
        empty."""
        if self.count == 0:
            return None
        rank, below, lower = q * self.count, 0, 0.0
        for upper, count in self.buckets:
            if count >= rank:
                if math.isinf(upper):
                    return lower
                return lower + (upper - lower) * (rank - below) / max(count - below, 1)
            below, lower = count, upper
        return lower


# --- Recording: workers, the reaper, the web tier ---------------------------------------


def jobs_started(jobs: Iterable[Job]) -> None:
    """Observe the wait of each job starting its first attempt (started_at - queued_at): a
    job the reaper put back waits again, but is counted once, at its first start."""
    waits = [_seconds(job.queued_at, job.started_at) for job in jobs
             if job.attempt == 1 and job.started_at is not None]
    if waits:
        _send(lambda pipe, minute: _observe(pipe, minute, "wait", waits))


def jobs_ended(jobs: Iterable[Job], *, steps: Iterable[float] = ()) -> None:
    """Count jobs that reached an end state, each by its status, with its run time
    (finished_at - started_at of its last attempt; none for a job that never started); and
    observe the seconds of each sampling step of the run (engine timings' `steps`; a batch's
    steps once, for all its jobs). Call only for jobs whose end the caller's own conditional
    update made."""
    ends = [(str(job.status), None if job.started_at is None
             else _seconds(job.started_at, job.finished_at)) for job in jobs]
    unknown = {outcome for outcome, _ in ends} - set(OUTCOMES)
    if unknown:
        raise ValueError(f"not an end state: {sorted(unknown)}")
    steps = list(steps)

    def build(pipe, minute: str) -> None:
        for outcome, seconds in ends:
            _count(pipe, minute, outcome)
            if seconds is not None:
                _observe(pipe, minute, "run", [seconds], label=outcome)
        if steps:
            _observe(pipe, minute, "step", steps)

    if ends or steps:
        _send(build)


def queued_job_canceled() -> None:
    """Count a job canceled while it waited (services.job_cancel): it never ran."""
    _send(lambda pipe, minute: _count(pipe, minute, "canceled"))


def _seconds(start, end) -> float:
    # The two times may come from two hosts' clocks (the web's submit, a worker's claim); a
    # small skew must not make a negative duration.
    return max((end - start).total_seconds(), 0.0)


def _observe(pipe, minute: str, metric: str, values: list[float], label: str = "") -> None:
    bounds = BUCKETS[metric]
    fields = Counter(_field(_bucket(bounds, value)) for value in values)
    key = _key(metric, label)
    for field, count in fields.items():
        pipe.hincrby(key, field, count)
        if metric != "step":  # the staff page shows waits and runs, not steps
            pipe.hincrby(minute, f"{metric}:{label}:{field}", count)
    pipe.hincrbyfloat(key, "sum", sum(values))


def _count(pipe, minute: str, outcome: str) -> None:
    pipe.hincrby(_key("ended"), outcome, 1)
    pipe.hincrby(minute, f"ended:{outcome}", 1)


def _bucket(bounds: tuple[float, ...], value: float) -> float:
    return next(bound for bound in bounds if value <= bound)


def _field(bound: float) -> str:
    return floatToGoString(bound)  # "0.5", "+Inf": as Prometheus writes `le`


def _send(build) -> None:
    """Build the commands into one pipeline, with the current minute's hash, and send them in
    one round trip."""
    minute = _minute_key(int(time.time() // 60))
    try:
        pipe = client().pipeline(transaction=False)
        build(pipe, minute)
        pipe.expire(minute, RECENT_TTL)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("could not record metrics: %s", exc)


# --- Reading: the web tier --------------------------------------------------------------


def totals() -> dict:
    """Everything recorded since the counters began, in one round trip: {"wait": Histogram,
    "step": Histogram, "run": {outcome: Histogram}, "ended": {outcome: count}}. Raises
    RedisError."""
    pipe = client().pipeline(transaction=False)
    pipe.hgetall(_key("wait"))
    pipe.hgetall(_key("step"))
    for outcome in OUTCOMES:
        pipe.hgetall(_key("run", outcome))
    pipe.hgetall(_key("ended"))
    wait, step, *runs, ended = pipe.execute()
    return {
        "wait": _histogram("wait", wait),
        "step": _histogram("step", step),
        "run": {outcome: _histogram("run", run) for outcome, run in zip(OUTCOMES, runs,
                                                                        strict=True)},
        "ended": {outcome: int(ended.get(outcome.encode(), 0)) for outcome in OUTCOMES},
    }


def recent() -> dict:
    """The last RECENT_MINUTES' figures, in one round trip: {"wait": Histogram, "run":
    Histogram of the succeeded runs, "ended": {outcome: count}}. Raises RedisError."""
    now = int(time.time() // 60)
    pipe = client().pipeline(transaction=False)
    for minute in range(now - RECENT_MINUTES + 1, now + 1):
        pipe.hgetall(_minute_key(minute))
    merged: Counter = Counter()
    for fields in pipe.execute():
        merged.update({name.decode(): int(count) for name, count in fields.items()})
    return {
        "wait": _histogram("wait", _fields_of(merged, "wait::")),
        "run": _histogram("run", _fields_of(merged, "run:succeeded:")),
        "ended": {outcome: merged[f"ended:{outcome}"] for outcome in OUTCOMES},
    }


def _fields_of(merged: Counter, prefix: str) -> dict[bytes, int]:
    return {name[len(prefix):].encode(): count for name, count in merged.items()
            if name.startswith(prefix)}


def _histogram(metric: str, fields: dict[bytes, bytes | int]) -> Histogram:
    """Cumulative buckets from a hash of per-bucket counts. A count stored under a bound this
    version no longer has goes in the next bound above it, where it still belongs."""
    bounds = BUCKETS[metric]
    counts = dict.fromkeys(bounds, 0)
    total = 0.0
    for name, value in fields.items():
        if name == b"sum":
            total = float(value)
        else:
            counts[_bucket(bounds, float(name))] += int(value)
    running, buckets = 0, []
    for bound in bounds:
        running += counts[bound]
        buckets.append((bound, running))
    return Histogram(buckets=buckets, total=total)


# --- Redis --------------------------------------------------------------------------------


def _key(metric: str, label: str = "") -> str:
    # Named after the deployment's queue, which every process of it shares (and a test run
    # has its own of).
    return f"studio:metrics:{settings.STUDIO_QUEUE}:{metric}" + (f":{label}" if label else "")


def _minute_key(minute: int) -> str:
    return _key("minute", str(minute))


_client: redis.Redis | None = None
_lock = threading.Lock()


def client() -> redis.Redis:
    """A Redis client of this process's own, with short timeouts: a scrape or a job's end
    must not wait long on a Redis that does not answer. Its pool reconnects after a fork."""
    global _client
    with _lock:
        if _client is None:
            _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1,
                                           socket_connect_timeout=1,
                                           retry=Retry(NoBackoff(), 1))
        return _client
