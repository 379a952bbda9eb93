"""Sends job messages to the websocket group of a job (DESIGN §5), from sync code.

The worker sends one every sampling step, from the engine's reporter thread beside the
sampling loop. A channel layer's `group_send` is a coroutine: from sync code it needs an
event loop, and handing every message to a loop in another thread costs a few hundred
microseconds of interpreter time a step, taken from the sampling loop on a small CPU. So
this publishes the way the channels_redis pub/sub layer does, with a plain Redis client:
one PUBLISH of the layer's own serialized message on the Redis channel the layer maps the
group to. The live websocket tests receive what this sends, so a layer upgrade that changed
either would fail them.

Progress is best effort by design (a lost message is a skipped frame); the final state is
always readable over HTTP.
"""

import logging
import threading

import redis
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

PUBSUB_BACKEND = "channels_redis.pubsub.RedisPubSubChannelLayer"


class GroupPublisher:
    def __init__(self):
        config = settings.CHANNEL_LAYERS["default"]
        hosts = config.get("CONFIG", {}).get("hosts", [])
        if config["BACKEND"] != PUBSUB_BACKEND or len(hosts) != 1 or not isinstance(hosts[0], str):
            raise ImproperlyConfigured(
                f"job messages need the {PUBSUB_BACKEND} channel layer with one Redis URL "
                "in CONFIG['hosts']"
            )
        self.layer = get_channel_layer()
        self.prefix = config["CONFIG"].get("prefix", "asgi")
        # Thread-safe (a connection pool), and it reconnects after a fork or a Redis restart.
        # One quick retry (a connection Redis dropped), not redis-py's default of several
        # with back-off: a step's message is not worth holding up the steps behind it.
        self.redis = redis.Redis.from_url(
            hosts[0], socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 1)
        )

    def send(self, group: str, message: dict) -> bool:
        """Publish to the group's subscribers; False (and a warning) if Redis refused."""
        try:
            self.redis.publish(f"{self.prefix}__group__{group}", self.layer.serialize(message))
        except redis.RedisError as exc:
            log.warning("dropped a job message to %s: %s", group, exc)
            return False
        return True


_publisher: GroupPublisher | None = None
_lock = threading.Lock()


def publisher() -> GroupPublisher:
    global _publisher
    with _lock:
        if _publisher is None:
            _publisher = GroupPublisher()
        return _publisher


def send(group: str, message: dict) -> bool:
    return publisher().send(group, message)
