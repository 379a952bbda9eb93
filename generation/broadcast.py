"""Sends job messages to the websocket group of a job (docs/architecture.md §5), from sync code.

The worker sends one every sampling step, from its sidecar process (generation/sidecar.py),
and a job's final state from the worker itself. A channel layer's `group_send` is a
coroutine: from sync code it needs an event loop, and handing every message to a loop in
another thread costs a few hundred microseconds of interpreter time a step. So this
publishes the way the channels_redis pub/sub layer does, with a plain Redis client: one
PUBLISH of the layer's own serialized message on the Redis channel the layer maps the group
to (generation/pubsub_layer.py, where tests/generation/test_library_internals.py checks it).

Progress is best effort by design (a lost message is a skipped frame); the final state is
always readable over HTTP. A job's latest progress message is also kept in Redis, so a client
that connects mid-run draws the current preview at once instead of waiting for the next step.
"""

import logging
import threading

import redis
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import pubsub_layer

log = logging.getLogger(__name__)

PUBSUB_BACKEND = "channels_redis.pubsub.RedisPubSubChannelLayer"
# A kept message outlives a stalled job long enough for its watchers, and no longer.
LATEST_TTL = 3600


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

    def send(self, group: str, message: dict, *, keep: bool) -> bool:
        """Publish to the group's subscribers, and in the same round trip keep the message as
        the group's latest (`keep`: a step) or drop the kept one (a job's final message).
        False (and a warning) if Redis refused."""
        payload = self.layer.serialize(message)
        try:
            pipe = self.redis.pipeline(transaction=False)
            if keep:
                pipe.set(self._latest_key(group), payload, ex=LATEST_TTL)
            else:
                pipe.delete(self._latest_key(group))
            pipe.publish(self._channel(group), payload)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("dropped a job message to %s: %s", group, exc)
            return False
        return True

    def send_many(self, messages: list[tuple[str, dict]]) -> bool:
        """Publish each (group, message) pair, all in one round trip; nothing is kept."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            for group, message in messages:
                pipe.publish(self._channel(group), self.layer.serialize(message))
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("dropped %s job messages: %s", len(messages), exc)
            return False
        return True

    def latest(self, group: str) -> dict | None:
        """The group's latest kept message, if Redis has it."""
        try:
            payload = self.redis.get(self._latest_key(group))
        except redis.RedisError as exc:
            log.warning("cannot read the latest message of %s: %s", group, exc)
            return None
        return None if payload is None else self.layer.deserialize(payload)

    def _channel(self, group: str) -> str:
        return pubsub_layer.group_channel(self.prefix, group)

    def _latest_key(self, group: str) -> str:
        return f"{self.prefix}__latest__{group}"


_publisher: GroupPublisher | None = None
_lock = threading.Lock()


def publisher() -> GroupPublisher:
    global _publisher
    with _lock:
        if _publisher is None:
            _publisher = GroupPublisher()
        return _publisher


def send(group: str, message: dict, *, keep: bool) -> bool:
    return publisher().send(group, message, keep=keep)


def send_many(messages: list[tuple[str, dict]]) -> bool:
    return publisher().send_many(messages)


def latest(group: str) -> dict | None:
    return publisher().latest(group)
