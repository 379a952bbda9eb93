"""How the synchronous endpoints wait for a job (generation/waiting.py): woken by the job's
final message on the channel layer, with the database polled in case a message is lost."""

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connections

from generation import waiting
from generation.models import Job
from tests.conftest import run_async

pytestmark = pytest.mark.django_db(transaction=True)


def run(coro):
    """Run `coro` on a loop of its own, closing the connections its sync_to_async calls
    opened (else the test database cannot be dropped)."""

    async def closing():
        try:
            return await coro
        finally:
            await sync_to_async(connections.close_all)()

    return run_async(closing())


def finish_later(job: Job, *, announce: bool):
    """Wait for `job`, and mark it succeeded a moment later; returns (job, seconds waited)."""

    async def go():
        waiter = asyncio.create_task(waiting.wait_for_job(job, timeout=30))
        await asyncio.sleep(0.5)  # the waiter has joined the job's group by now
        started = time.monotonic()
        await sync_to_async(Job.objects.filter(pk=job.pk).update)(status=Job.Status.SUCCEEDED)
        if announce:
            await get_channel_layer().group_send(job.group_name, {"type": "job.state", "job": {}})
        return await waiter, time.monotonic() - started

    return run(go())


def test_the_final_message_wakes_the_wait(alice, monkeypatch):
    monkeypatch.setattr(waiting, "POLL_SECONDS", 60)
    job = Job.objects.create(owner=alice, recipe={}, total_steps=4)
    finished, waited = finish_later(job, announce=True)
    assert finished.status == Job.Status.SUCCEEDED and waited < 5


def test_a_lost_message_is_made_up_for_by_polling(alice, monkeypatch):
    monkeypatch.setattr(waiting, "POLL_SECONDS", 0.2)
    job = Job.objects.create(owner=alice, recipe={}, total_steps=4)
    finished, waited = finish_later(job, announce=False)
    assert finished.status == Job.Status.SUCCEEDED and waited < 5


def test_a_wait_ends_with_the_job_still_going(alice):
    job = Job.objects.create(owner=alice, recipe={}, total_steps=4)
    with pytest.raises(waiting.NoImages) as late:
        run(waiting.wait_for_outputs(job, timeout=0.3))
    assert late.value.status == 504 and str(job.pk) in late.value.message


def test_a_failed_job_gives_its_reason(alice):
    job = Job.objects.create(owner=alice, recipe={}, status=Job.Status.FAILED, error="Out of ink")
    with pytest.raises(waiting.NoImages) as failed:
        run(waiting.wait_for_outputs(job))
    assert (failed.value.status, failed.value.message) == (500, "Out of ink")


def test_a_wait_holds_no_database_connection_between_reads(alice, monkeypatch):
    # A wait can last half an hour; a connection kept meanwhile is one the pool lacks.
    monkeypatch.setattr(waiting, "POLL_SECONDS", 0.2)
    job = Job.objects.create(owner=alice, recipe={}, total_steps=4)
    from django.db import connection

    async def go():
        waiter = asyncio.create_task(waiting.wait_for_job(job, timeout=30))
        await asyncio.sleep(0.5)  # a few reads have happened by now
        held = await sync_to_async(lambda: connection.connection is not None)()
        await sync_to_async(Job.objects.filter(pk=job.pk).update)(status=Job.Status.SUCCEEDED)
        await waiter
        return held

    assert run(go()) is False
