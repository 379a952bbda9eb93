"""GET /metrics, Prometheus's text format, and the staff queue page's figures.

Every figure is read when it is asked for, from where it is kept: the queue's length from
Postgres (one aggregate over the queued and running jobs, along the (status, queued_at) index,
however many finished jobs the table holds), the histograms and counters from Redis
(generation/metrics.py, one round trip), the workers from the worker registry. Finished jobs
are counted by studio_jobs_finished_total, never by counting rows: deleting an account deletes
its jobs, and a counter must not go down.

Who may read it: staff (a session), a scraper sending `Authorization: Bearer
<STUDIO_METRICS_TOKEN>`, or a client whose address is in STUDIO_METRICS_ALLOW. Anyone else
gets a 404, as for every other thing they may not see: the figures say how busy the site is
and which models its workers hold, and a 404 does not even say that they are here.
"""

import functools
import hmac
import ipaddress
import logging

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError
from django.db.models import Count, Min, Q
from django.http import Http404, HttpResponse, HttpResponseNotAllowed
from django.utils import timezone
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString
from redis.exceptions import RedisError

from . import metrics, worker_registry
from .models import Job

log = logging.getLogger(__name__)


def metrics_page(request):
    if not may_read(request):
        raise Http404
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encode(REGISTRY), content_type=content_type)


# --- Who may read -------------------------------------------------------------------------


def may_read(request) -> bool:
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated and user.is_staff:
        return True
    token = settings.STUDIO_METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        return True
    return address_allowed(request.META.get("REMOTE_ADDR", ""))


def address_allowed(address: str) -> bool:
    """Whether the client's address (REMOTE_ADDR: the proxy's, unless the server is told to
    trust its forwarded header, as uvicorn's FORWARDED_ALLOW_IPS does) is in
    STUDIO_METRICS_ALLOW."""
    networks = allowed_networks(tuple(settings.STUDIO_METRICS_ALLOW))
    if not networks:
        return False
    try:
        client = ipaddress.ip_address(address)
    except ValueError:
        return False
    client = getattr(client, "ipv4_mapped", None) or client  # ::ffff:10.0.0.5 is 10.0.0.5
    return any(client in network for network in networks)


@functools.cache
def allowed_networks(entries: tuple[str, ...]) -> tuple:
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"STUDIO_METRICS_ALLOW entry {entry!r} is not an IP address or network: {exc}"
            ) from exc
    return tuple(networks)


# --- The figures --------------------------------------------------------------------------


def queue_now() -> dict:
    """Queued and running jobs, and when the oldest queued one was submitted (None: none
    waits). One query, on the (status, queued_at) index."""
    queued = Q(status=Job.Status.QUEUED)
    return Job.objects.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).aggregate(
        queued=Count("pk", filter=queued),
        running=Count("pk", filter=Q(status=Job.Status.RUNNING)),
        oldest=Min("queued_at", filter=queued),
    )


class StudioCollector:
    """Reads every figure at scrape time. A source that does not answer leaves its figures
    out, and says so in studio_metrics_source_up, rather than failing the whole scrape."""

    def collect(self):
        up = GaugeMetricFamily("studio_metrics_source_up", "Whether this scrape could read "
                               "the figures kept in the source (1) or not (0).",
                               labels=["source"])
        for source, read in (("postgres", self._queue), ("redis", self._recorded),
                             ("workers", self._workers)):
            try:
                families = list(read())
            except (DatabaseError, RedisError, OSError) as exc:
                log.warning("metrics: cannot read %s: %s", source, exc)
                families = []
                up.add_metric([source], 0)
            else:
                up.add_metric([source], 1)
            yield from families
        yield up

    @staticmethod
    def _queue():
        now = queue_now()
        jobs = GaugeMetricFamily("studio_jobs", "Jobs waiting or running now, by state.",
                                 labels=["state"])
        jobs.add_metric(["queued"], now["queued"])
        jobs.add_metric(["running"], now["running"])
        yield jobs
        oldest = (timezone.now() - now["oldest"]).total_seconds() if now["oldest"] else 0
        yield GaugeMetricFamily("studio_queue_oldest_wait_seconds", "How long the longest "
                                "waiting queued job has waited so far (0: none waits).",
                                value=max(oldest, 0.0))

    @staticmethod
    def _recorded():
        totals = metrics.totals()
        yield _histogram("studio_job_wait_seconds", "Seconds from a job's submission to "
                         "the start of its first attempt.", totals["wait"])
        run = HistogramMetricFamily("studio_job_run_seconds", "Seconds from the start of a "
                                    "job's last attempt to its end, by outcome.",
                                    labels=["outcome"])
        for outcome, histogram in totals["run"].items():
            run.add_metric([outcome], _buckets(histogram), histogram.total)
        yield run
        yield _histogram("studio_step_seconds", "Seconds a sampling step took (each step "
                         "of a batch run counts once).", totals["step"])
        ended = CounterMetricFamily("studio_jobs_finished", "Jobs that reached an end "
                                    "state, by outcome.", labels=["outcome"])
        for outcome, count in totals["ended"].items():
            ended.add_metric([outcome], count)
        yield ended

    @staticmethod
    def _workers():
        workers = worker_registry.live_workers()
        yield GaugeMetricFamily("studio_workers_alive", "Workers up now (that reported to "
                                "the worker registry lately).", value=len(workers))
        yield GaugeMetricFamily("studio_workers_draining", "Workers up now that take no new "
                                "job.", value=len(workers) - len(
                                    worker_registry.taking_jobs(workers)))
        models = GaugeMetricFamily("studio_worker_models", "1 for each model a worker can "
                                   "load; loaded: whether it holds it in memory now.",
                                   labels=["worker", "model", "loaded"])
        for worker in workers:
            holds = set(worker["holds"])
            for model in sorted(set(worker["models"]) | holds):
                models.add_metric([worker["name"], model, str(model in holds).lower()], 1)
        yield models


def _histogram(name: str, documentation: str, histogram: metrics.Histogram):
    return HistogramMetricFamily(name, documentation, buckets=_buckets(histogram),
                                 sum_value=histogram.total)


def _buckets(histogram: metrics.Histogram) -> list[tuple[str, int]]:
    return [(floatToGoString(bound), count) for bound, count in histogram.buckets]


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(StudioCollector())


# --- The staff queue page -----------------------------------------------------------------


def staff_figures() -> dict:
    """What the staff queue page shows of the figures: the queue now, and the last hour's
    waits, runs and ends (metrics.recent). {"recent": None} when Redis does not answer."""
    now = queue_now()
    oldest = now["oldest"]
    figures = {
        "queued": now["queued"], "running": now["running"],
        "oldest_wait": round((timezone.now() - oldest).total_seconds()) if oldest else None,
        "recent": None, "recent_minutes": metrics.RECENT_MINUTES,
    }
    try:
        recent = metrics.recent()
    except RedisError as exc:
        log.warning("metrics: cannot read the last hour's figures: %s", exc)
        return figures
    figures["recent"] = {
        "waits": recent["wait"].count,
        "wait_p50": recent["wait"].quantile(0.5), "wait_p95": recent["wait"].quantile(0.95),
        "run_p50": recent["run"].quantile(0.5), "run_p95": recent["run"].quantile(0.95),
        **recent["ended"],
    }
    return figures
