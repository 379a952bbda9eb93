"""The per-user queue limit holds under concurrent submits: the check and the insert are one
step per user, each submit on a database connection of its own, as web requests are."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from generation import services
from generation.models import Job

SUBMITTERS = 40
LIMIT = 20
ROUNDS = 3


def submit_all_at_once(user, submitters: int) -> list[str]:
    """`submitters` threads, each with its own connection, submit for `user` together."""
    start = threading.Barrier(submitters)

    def submit(_) -> str:
        try:
            start.wait()
            services.job_submit(user=user, recipe={"prompt": "red circle", "steps": 4})
            return "queued"
        except services.LimitExceeded:
            return "refused"
        finally:
            connection.close()

    with ThreadPoolExecutor(submitters) as pool:
        return list(pool.map(submit, range(submitters)))


@pytest.mark.django_db(transaction=True)
def test_concurrent_submits_never_queue_more_than_the_limit(alice, bob, settings, celery_queue):
    settings.STUDIO_MAX_QUEUED_PER_USER = LIMIT
    settings.STUDIO_MAX_SUBMITS_PER_MINUTE = 10 * SUBMITTERS  # only the queued limit counts
    for _ in range(ROUNDS):  # a race lost once in a while still fails the test
        Job.objects.all().delete()
        celery_queue.clear()
        outcomes = submit_all_at_once(alice, SUBMITTERS)
        assert outcomes.count("queued") == LIMIT
        assert outcomes.count("refused") == SUBMITTERS - LIMIT
        assert Job.objects.filter(owner=alice, status=Job.Status.QUEUED).count() == LIMIT
        # Each queued job was dispatched once, after its commit; nothing for the refused ones.
        assert celery_queue.backlog() == LIMIT
    # The lock is per user: another user still has room.
    services.job_submit(user=bob, recipe={"prompt": "blue square", "steps": 4})
