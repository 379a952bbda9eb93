"""What /healthz checks: Postgres, Redis and the media storage, each on its own.

Each check runs in a thread of its own, all at once, and the report waits for them at most
DEADLINE seconds: a dependency that does not answer (a dropped packet, a store behind a dead
route) is reported as timed out within that, whatever its own client's timeouts are, and holds
the thread that serves Django's synchronous views no longer. A check still running then
finishes in the background, bounded by its client's own timeouts (studio/media_storage.py for
the store, SOCKET_TIMEOUT below for Redis, the pool's wait for Postgres).

The report names each check "ok", or the kind of failure (the exception's class): the details,
which may name internal hosts, go to the log, not to whoever polls the endpoint.
"""

import logging
import os
import threading
import time
from pathlib import Path

from django.conf import settings
from django.core.files.storage import storages
from django.db import connections

log = logging.getLogger(__name__)

DEADLINE = 3.0  # seconds: compose healthchecks poll with a timeout of a few seconds
SOCKET_TIMEOUT = 2.0  # seconds, for the Redis probe's connect and each answer
REUSE_SECONDS = 1.0  # an answer serves every request for this long
OK = "ok"


def report(deadline: float = DEADLINE) -> dict[str, str]:
    """{"database": ..., "redis": ..., "storage": ...}, each "ok" or what went wrong.

    Requests that arrive while a probe runs, or within REUSE_SECONDS after it ended, share
    its answer instead of starting their own: /healthz is open to anyone, so a flood of
    requests would otherwise cost a query, a PING and a request to the store each, and during
    an outage pile up threads whose checks hang for their clients' full timeouts."""
    global _probe
    with _probe_lock:
        if _probe is None or not _probe.fresh():
            _probe = _Probe(deadline)
        probe = _probe
    return probe.answer()


def forget() -> None:
    """The next report probes afresh (tests that change what it checks)."""
    global _probe
    with _probe_lock:
        _probe = None


class _Probe:
    """One run of every check, each in a thread of its own, answered by its deadline."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.ends = time.monotonic() + deadline
        self.results: dict[str, str] = {}
        self.ended: float | None = None  # when its first answer was given
        self.threads = [threading.Thread(target=_run, args=(name, check, self.results),
                                         daemon=True, name=f"healthz-{name}")
                        for name, check in CHECKS.items()]
        for thread in self.threads:
            thread.start()

    def fresh(self) -> bool:
        """Still running, or ended less than REUSE_SECONDS ago."""
        now = time.monotonic()
        if now < self.ends and any(t.is_alive() for t in self.threads):
            return True
        return self.ended is not None and now - self.ended < REUSE_SECONDS

    def answer(self) -> dict[str, str]:
        for thread in self.threads:
            thread.join(max(0.0, self.ends - time.monotonic()))
        if self.ended is None:
            self.ended = time.monotonic()
        return {name: self.results.get(name, f"error: no answer within {self.deadline:g} s")
                for name in CHECKS}


_probe: _Probe | None = None
_probe_lock = threading.Lock()


def healthy(checks: dict[str, str]) -> bool:
    return all(value == OK for value in checks.values())


def _run(name: str, check, results: dict[str, str]) -> None:
    try:
        check()
    except Exception as exc:  # any failure is the report's answer, not the endpoint's
        log.warning("healthz: %s failed: %r", name, exc)
        results[name] = f"error: {type(exc).__name__}"
    else:
        results[name] = OK


def check_database() -> None:
    # This thread's own connection, from the pool when there is one, handed back at once: a
    # thread that keeps one would keep it out of the pool for good.
    connection = connections["default"]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()


_redis_clients: dict = {}
_redis_lock = threading.Lock()


def check_redis() -> None:
    """A PING on REDIS_URL (the cache, the channel layer and by default the broker), from a
    client kept between probes with short timeouts of its own: the cache's has none."""
    from redis import Redis

    url = settings.REDIS_URL
    with _redis_lock:
        client = _redis_clients.get(url)
        if client is None:
            client = _redis_clients[url] = Redis.from_url(
                url, socket_connect_timeout=SOCKET_TIMEOUT, socket_timeout=SOCKET_TIMEOUT)
    client.ping()


def check_storage() -> None:
    """A HEAD on the bucket for the S3 store: one cheap request that proves the endpoint,
    the credentials and the bucket (which a HEAD on a missing object would not: it answers
    404 for a missing bucket too). For the local disk, that MEDIA_ROOT can be written, or
    created when the first file is saved."""
    storage = storages["default"]
    if hasattr(storage, "bucket_name"):  # storages.backends.s3.S3Storage
        _s3_client(storage).head_bucket(Bucket=storage.bucket_name)
    else:
        _check_folder(Path(storage.location))


_s3_client_kept: list = []  # [(storage, client)]: the storage kept, so its id is never reused
_s3_lock = threading.Lock()


def _s3_client(storage):
    """The storage's boto3 client, kept for later probes. django-storages keeps a connection
    per thread, and each probe runs on a new thread, where making one would cost tens of
    milliseconds; a boto3 client (unlike the resource around it) is safe to share."""
    with _s3_lock:
        if not _s3_client_kept or _s3_client_kept[0][0] is not storage:
            # The first probe, or the storage was replaced (settings changed, in tests).
            _s3_client_kept[:] = [(storage, storage.connection.meta.client)]
        return _s3_client_kept[0][1]


def _check_folder(folder: Path) -> None:
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir():
        raise NotADirectoryError("MEDIA_ROOT is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError("MEDIA_ROOT cannot be written")


CHECKS = {"database": check_database, "redis": check_redis, "storage": check_storage}
