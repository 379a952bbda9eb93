"""What the Celery workers are doing, for the staff page and the reaper."""

import logging

from django.conf import settings
from redis import Redis
from redis.exceptions import RedisError

from studio.celery import app

log = logging.getLogger(__name__)


def worker_summary(timeout: float = 1.0) -> list[dict]:
    """The workers that answer a broadcast ping within `timeout`, with their active tasks."""
    inspect = app.control.inspect(timeout=timeout)
    active = inspect.active() or {}
    return [
        {"name": name, "busy": len(tasks)} for name, tasks in sorted(active.items())
    ]


def broker_backlog() -> int:
    """Messages waiting in the generation queue. Celery's Redis transport keeps a queue as
    a list named after it; reserved and running messages are not in it."""
    try:
        return Redis.from_url(settings.CELERY_BROKER_URL).llen(settings.STUDIO_QUEUE)
    except RedisError as exc:
        log.warning("cannot read the broker backlog: %s", exc)
        # Unknown backlog: claim a full one, so the reaper sends nothing twice.
        return 10**9
