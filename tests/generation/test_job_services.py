"""Job rules (docs/architecture.md §3) on the real Postgres: limits, fair claiming, cancel, the
reaper; and the reads beside them (selectors) and the job's state they feed."""

import base64
import json
from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from generation import presenters, selectors, services
from generation.models import Job, Output

pytestmark = pytest.mark.django_db


def queue(user, n=1, **fields):
    recipe = {"prompt": f"a red circle by {user.username}", "steps": 4, "seed": 1}
    return [
        Job.objects.create(owner=user, recipe=recipe, total_steps=4, **fields) for _ in range(n)
    ]


def finish(job):
    Job.objects.filter(pk=job.pk).update(status=Job.Status.SUCCEEDED)


def test_the_queue_is_round_robin_across_users(alice, bob):
    queue(alice, 5)
    queue(bob, 1)
    order = []
    while (job := services.job_claim_next(worker="w")) is not None:
        order.append(job.owner.username)
        finish(job)
    assert order == ["alice", "bob", "alice", "alice", "alice", "alice"]


def test_a_late_user_is_served_before_the_busy_users_next_job(alice, bob):
    queue(alice, 20)
    first = services.job_claim_next(worker="w")
    finish(first)
    queue(bob, 1)
    assert services.job_claim_next(worker="w").owner == bob


def test_queue_positions_count_the_jobs_that_will_start_first(alice, bob, carol):
    # alice was served last, bob earlier, carol never: carol, bob, alice take turns.
    served = queue(alice, 1) + queue(bob, 1)
    Job.objects.filter(pk=served[1].pk).update(
        status=Job.Status.SUCCEEDED, started_at=timezone.now() - timedelta(minutes=5))
    Job.objects.filter(pk=served[0].pk).update(
        status=Job.Status.SUCCEEDED, started_at=timezone.now())
    jobs = queue(alice, 3) + queue(bob, 2) + queue(carol, 1)
    positions = [selectors.queue_position(job) for job in jobs]
    assert positions == [2, 4, 5, 1, 3, 0]
    claimed = []
    while (job := services.job_claim_next(worker="w")) is not None:
        claimed.append(job.pk)
        finish(job)
    assert claimed == [job.pk for _, job in sorted(zip(positions, jobs, strict=True))]


def test_a_job_is_claimed_once(alice):
    (job,) = queue(alice)
    assert services.job_claim_next(worker="w1").pk == job.pk
    assert services.job_claim_next(worker="w2") is None
    job.refresh_from_db()
    assert job.status == "running" and job.attempt == 1 and job.worker == "w1"


@pytest.mark.django_db(transaction=True)
def test_a_claim_skips_the_job_another_worker_holds_and_does_not_wait(alice, bob):
    """Two workers claiming at once: the second gets the next job at once (SKIP LOCKED), and
    it is the next user's turn, not the held job's owner's next job."""
    first, later = queue(alice, 2)
    (second,) = queue(bob)
    sql, head_params = services.claim_statement()
    db = connection.settings_dict
    with psycopg.connect(dbname=db["NAME"], user=db["USER"], host=db["HOST"],
                         port=db["PORT"] or 5432) as other:
        now = timezone.now()
        # The other worker's claim, its transaction still open: it holds the head's row.
        held = other.execute(sql, ["running", "w2", now, now, *head_params, "queued"])
        assert held.fetchone()[0] == first.pk
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '2s'")  # a claim that waited would fail
        try:
            assert services.job_claim_next(worker="w1").pk == second.pk
            assert services.job_claim_next(worker="w1").pk == later.pk
            assert services.job_claim_next(worker="w1") is None
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
        other.commit()
    first.refresh_from_db()
    assert (first.status, first.worker, first.attempt) == ("running", "w2", 1)


def test_progress_records_the_step_and_a_fresh_heartbeat(alice):
    queue(alice)
    job = services.job_claim_next(worker="w1")
    stale(job)
    before = timezone.now()
    assert services.job_progress(job=job, step=3) is True
    job.refresh_from_db()
    assert job.step == 3 and job.heartbeat >= before and job.status == "running"


def test_progress_from_a_superseded_attempt_is_refused(alice):
    queue(alice)
    job = services.job_claim_next(worker="w1")
    Job.objects.filter(pk=job.pk).update(attempt=2)
    assert services.job_progress(job=job, step=1) is False
    assert services.job_finish(job=job, outputs=[], timings={}) is None


def test_the_queued_limit_says_which_limit(alice, settings):
    settings.STUDIO_MAX_QUEUED_PER_USER = 2
    queue(alice, 2)
    with pytest.raises(services.LimitExceeded, match="2 jobs waiting \\(the limit is 2\\)"):
        services.job_submit(user=alice, recipe={"steps": 4})


def test_the_per_minute_limit_says_when_to_retry(alice, settings):
    settings.STUDIO_MAX_SUBMITS_PER_MINUTE = 3
    for job in queue(alice, 3):
        Job.objects.filter(pk=job.pk).update(
            status=Job.Status.SUCCEEDED, queued_at=timezone.now() - timedelta(seconds=50)
        )
    with pytest.raises(services.LimitExceeded, match="last minute") as err:
        services.job_submit(user=alice, recipe={"steps": 4})
    assert 1 <= err.value.retry_after <= 11
    assert f"Try again in {err.value.retry_after} s" in str(err.value)


def test_canceling_a_queued_job_is_immediate(alice):
    (job,) = queue(alice)
    assert services.job_cancel(job=job, actor=alice) == "canceled"
    assert services.job_claim_next(worker="w") is None


def test_canceling_a_running_job_stops_its_next_step(alice):
    queue(alice)
    job = services.job_claim_next(worker="w")
    assert services.job_cancel(job=job, actor=alice) == "running"
    assert services.job_progress(job=job, step=1) is False
    assert services.job_mark_canceled(job=job)


def stale(job, seconds=3600):
    Job.objects.filter(pk=job.pk).update(heartbeat=timezone.now() - timedelta(seconds=seconds))


def test_the_reaper_requeues_a_job_with_a_stale_heartbeat(alice):
    queue(alice)
    job = services.job_claim_next(worker="w")
    stale(job)
    report = services.jobs_reap(broker_backlog=1)
    job.refresh_from_db()
    assert (job.status, job.attempt, report.requeued) == ("queued", 1, 1)
    assert services.job_claim_next(worker="w2").attempt == 2


def test_the_reaper_fails_a_job_out_of_attempts_with_the_reason(alice, settings):
    settings.STUDIO_MAX_ATTEMPTS = 1
    queue(alice)
    job = services.job_claim_next(worker="w")
    stale(job)
    services.jobs_reap(broker_backlog=0)
    job.refresh_from_db()
    assert job.status == "failed" and "stopped responding" in job.error


def test_the_reaper_leaves_a_live_job_alone(alice):
    queue(alice)
    job = services.job_claim_next(worker="w")
    services.jobs_reap(broker_backlog=0)
    job.refresh_from_db()
    assert job.status == "running"


def test_the_reaper_resends_messages_for_queued_jobs_the_broker_lost(alice, celery_queue):
    queue(alice, 3)
    report = services.jobs_reap(broker_backlog=1)
    assert report.resent == 2
    assert celery_queue.backlog() == 2


def test_the_reaper_cancels_a_stale_job_its_owner_canceled(alice):
    queue(alice)
    job = services.job_claim_next(worker="w")
    services.job_cancel(job=job, actor=alice)
    stale(job)
    report = services.jobs_reap(broker_backlog=0)
    job.refresh_from_db()
    assert job.status == "canceled" and (report.canceled, report.ended) == (1, [str(job.pk)])


@pytest.mark.parametrize("attempts, status", [(1, "failed"), (2, "queued")])
def test_the_reap_task_tells_watchers_what_became_of_the_job(
    transactional_db, alice, settings, attempts, status
):
    import asyncio

    from channels.db import database_sync_to_async
    from channels.layers import get_channel_layer

    from generation.tasks import reap_jobs
    from tests.conftest import run_async

    settings.STUDIO_MAX_ATTEMPTS = attempts
    queue(alice)
    job = services.job_claim_next(worker="w")
    stale(job)

    async def watch_while_reaping():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(job.group_name, channel)
        # database_sync_to_async hands its thread's connection back, so none is left open.
        await database_sync_to_async(reap_jobs)()
        return [await asyncio.wait_for(layer.receive(channel), 10) for _ in range(1 + requeued)]

    requeued = status == "queued"
    messages = {m["type"]: m for m in run_async(watch_while_reaping())}
    assert messages["job.state"]["job"]["status"] == status
    if requeued:  # waiting again, and where: the queue's order changed too
        assert messages["job.state"]["job"]["queue_position"] == 0
        assert messages["job.queue"] == {"type": "job.queue", "job": str(job.pk),
                                         "queue_position": 0}
    else:
        assert "stopped responding" in messages["job.state"]["job"]["error"]


def test_queue_announcements_take_turns(transactional_db, alice):
    """Each reads the order after the one before it published, so the last message a page
    gets is never an older order than the one before it."""
    import asyncio
    import threading

    from channels.layers import get_channel_layer

    from tests.conftest import run_async

    (job,) = queue(alice)
    db = connection.settings_dict
    params = {"dbname": db["NAME"], "user": db["USER"], "host": db["HOST"],
              "port": db["PORT"] or 5432, "autocommit": True}
    waiting = ("SELECT count(*) FROM pg_stat_activity "
               "WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'")

    async def listen():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(job.group_name, channel)
        with psycopg.connect(**params) as other, psycopg.connect(**params) as look:
            other.execute("SELECT pg_advisory_lock(%s)", [services.ANNOUNCE_LOCK])
            def announce():
                try:
                    services.announce_queue()
                finally:
                    connection.close()  # this thread's

            announcer = threading.Thread(target=announce)
            announcer.start()
            for _ in range(1000):  # it waits its turn
                if look.execute(waiting).fetchone()[0] == 1:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the announcer did not wait for the lock")
            other.execute("SELECT pg_advisory_unlock(%s)", [services.ANNOUNCE_LOCK])
            message = await asyncio.wait_for(layer.receive(channel), 10)
            await asyncio.to_thread(announcer.join)
            return message

    assert run_async(listen())["queue_position"] == 0


def test_only_the_owner_cancels_not_even_staff(alice, admin):
    (job,) = queue(alice)
    with pytest.raises(services.NotJobOwner):
        services.job_cancel(job=job, actor=admin)
    job.refresh_from_db()
    assert job.status == "queued"


def test_a_submit_sends_the_run_task_by_name_on_this_runs_queue(
    alice, celery_queue, django_capture_on_commit_callbacks
):
    """Sent by name (the task's module imports the services), to the queue this run's worker
    reads, and with no result to wait for, as the task itself declares."""
    with django_capture_on_commit_callbacks(execute=True):
        job = services.job_submit(user=alice, recipe={"prompt": "a red circle", "steps": 4})
    (raw,) = celery_queue.redis.lrange(celery_queue.name, 0, -1)
    message = json.loads(raw)
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert message["headers"]["task"] == "generation.run_job"
    assert message["headers"]["ignore_result"] is True
    assert (args, kwargs) == ([str(job.pk)], {})


def test_a_jobs_state_is_presented_from_its_view_without_a_query(
    alice, django_assert_num_queries
):
    (job,) = queue(alice)
    finish(job)
    job.refresh_from_db()
    recipe = {**job.recipe, "batch_index": 1}
    Output.objects.create(job=job, index=1, image="outputs/x/1.png", recipe=recipe,
                          width=8, height=8)
    view = selectors.job_view(job)
    with django_assert_num_queries(0):
        state = presenters.job_state(view)
    assert (state["status"], state["queue_position"]) == ("succeeded", None)
    assert [(image["index"], image["seed"]) for image in state["images"]] == [(1, 2)]


@pytest.mark.parametrize("status, queries", [
    ("queued", 1),  # its place: the queue's order
    ("running", 0),
    ("canceled", 0),
    ("succeeded", 1),  # its outputs
])
def test_a_jobs_view_reads_only_what_its_status_shows(
    alice, django_assert_num_queries, status, queries
):
    (job,) = queue(alice)
    Job.objects.filter(pk=job.pk).update(status=status)
    job.refresh_from_db()
    with django_assert_num_queries(queries):
        view = selectors.job_view(job)
    assert view.queue_position == (0 if status == "queued" else None)
    assert view.outputs == []


def test_a_jobs_view_takes_the_outputs_its_caller_has(alice, django_assert_num_queries):
    """The worker that just stored them announces the job without reading them back."""
    (job,) = queue(alice)
    finish(job)
    job.refresh_from_db()
    stored = [Output(job=job, index=0, recipe=job.recipe, width=8, height=8)]
    with django_assert_num_queries(0):
        assert selectors.job_view(job, outputs=stored).outputs == stored
