"""The broker's Redis, as Studio reads and writes it beside Celery: the queue's length
(generation/workers.py) and Studio's own small keys there (the worker registry, the /learn/
page's computations), which every web server and worker, on whatever host, shares."""

import functools

from django.conf import settings
from redis import Redis

# One client per process, with short timeouts, since a web request may wait on it; redis-py
# remakes its connections in a forked child.
BROKER_TIMEOUT = 2  # seconds, to connect and for each answer


@functools.cache
def broker_client() -> Redis:
    return Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=BROKER_TIMEOUT,
                          socket_connect_timeout=BROKER_TIMEOUT, decode_responses=True)
