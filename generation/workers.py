"""What the Celery workers are doing, for the staff page and the reaper."""

import logging

from django.conf import settings
from redis.exceptions import RedisError

from studio.celery import app

from . import worker_registry
from .broker import broker_client

log = logging.getLogger(__name__)


def worker_summary(timeout: float = 1.0) -> list[dict]:
    """The workers that answer a broadcast ping within `timeout`, with their active tasks."""
    inspect = app.control.inspect(timeout=timeout)
    active = inspect.active() or {}
    return [
        {"name": name, "busy": len(tasks)} for name, tasks in sorted(active.items())
    ]


def staff_workers(timeout: float = 1.0) -> list[dict]:
    """Every worker that answers a ping (worker_summary) or reports in the worker registry,
    by name, for the staff page: `busy` (its running tasks; None when it did not answer),
    and the registry's models, holds, device and draining (`registered` False for one that
    reports nothing there, as the scheduler's worker)."""
    try:
        registered = {worker["name"]: worker for worker in worker_registry.live_workers()}
    except RedisError as exc:
        log.warning("cannot read the worker registry: %s", exc)
        registered = {}
    busy = {worker["name"]: worker["busy"] for worker in worker_summary(timeout)}
    return [
        {"name": name, "busy": busy.get(name), "registered": name in registered,
         **{key: registered.get(name, {}).get(key, empty) for key, empty in
            (("models", []), ("holds", []), ("device", ""), ("draining", False))}}
        for name in sorted(busy.keys() | registered.keys())
    ]


def broker_backlog() -> int:
    """Messages waiting in the generation queue. Celery's Redis transport keeps a queue as
    a list named after it; reserved and running messages are not in it."""
    try:
        return broker_client().llen(settings.STUDIO_QUEUE)
    except RedisError as exc:
        log.warning("cannot read the broker backlog: %s", exc)
        # Unknown backlog: claim a full one, so the reaper sends nothing twice.
        return 10**9
