"""Jobs end to end: a real Celery worker process, the real Redis broker and
channel layer, real websocket connections to a live uvicorn server."""

import asyncio
import json
import os
import signal
import time

import pytest
from django.conf import settings
from django.db import connection
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from generation import broadcast, recipes, runner, services
from generation.models import Job
from generation.workers import broker_backlog
from studio.services import token_create
from tests.conftest import WORKER_APPNAME, Worker, run_async

STEPS = 6


def submit(user, model, **params) -> Job:
    params = {"prompt": "red circle", "model": model, "steps": STEPS,
              "seed": 42, "width": 32, "height": 32, **params}
    return services.job_submit(user=user, recipe=recipes.recipe_from_params(params))


def bearer(user) -> dict:
    return {"Authorization": f"Bearer {token_create(user=user, name='test')[1]}"}


def watch(server, job, headers, *, until_final=True, send=None, timeout=120, count=1):
    """Connect to the job's socket and collect messages until its final state or, without
    `until_final`, its first `count` messages (fewer if no more come within `timeout`)."""

    async def go():
        messages, pending = [], send
        url = f"{server.ws_url}/ws/jobs/{job.pk}/"
        async with connect(url, additional_headers=headers, open_timeout=10) as ws:
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                try:
                    message = json.loads(await asyncio.wait_for(ws.recv(), left))
                except TimeoutError:
                    break
                messages.append(message)
                if pending and pending[0](message):
                    await ws.send(json.dumps(pending[1]))
                    pending = None
                final = message["type"] == "state" and message["job"]["status"] in Job.FINISHED
                if final or (not until_final and len(messages) == count):
                    return messages
        if until_final:
            raise AssertionError(f"no final state in {timeout}s: {messages[-3:]}")
        return messages

    return run_async(go())


def progress(messages):
    return [m for m in messages if m["type"] == "progress"]


def test_submit_streams_every_step_then_succeeds_with_images(
    studio_server, celery_worker, alice, tiny, client
):
    job = submit(alice, tiny, batch_size=2)
    messages = watch(studio_server, job, bearer(alice))
    assert messages[0]["type"] == "state"
    steps = [m["step"] for m in progress(messages)]
    assert steps == list(range(1, STEPS + 1))
    assert all(m["preview"].startswith("data:image/") for m in progress(messages))
    final = messages[-1]["job"]
    assert final["status"] == "succeeded" and len(final["images"]) == 2
    client.force_login(alice)
    png = client.get(final["images"][0]["url"])
    assert png.status_code == 200 and png.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    job.refresh_from_db()
    assert [bool(output.trajectory) for output in job.outputs.all()] == [True, True]
    assert job.worker == celery_worker.name  # as the staff page lists the workers that are up


def test_cancel_mid_run(studio_server, celery_worker, alice, tiny):
    job = submit(alice, tiny, steps=200)
    is_running = lambda m: m["type"] == "progress" and m["step"] >= 2  # noqa: E731
    messages = watch(studio_server, job, bearer(alice), send=(is_running, {"type": "cancel"}))
    assert messages[-1]["job"]["status"] == "canceled"
    assert progress(messages)[-1]["step"] < 200
    job.refresh_from_db()
    assert job.status == "canceled" and job.outputs.count() == 0


def test_a_late_connection_gets_the_current_state(studio_server, celery_worker, alice, tiny):
    job = submit(alice, tiny)
    watch(studio_server, job, bearer(alice))
    late = watch(studio_server, job, bearer(alice), until_final=False)
    assert late[0]["type"] == "state" and late[0]["job"]["status"] == "succeeded"
    assert len(late[0]["job"]["images"]) == 1


def test_the_worker_keeps_each_steps_message_as_the_jobs_latest(
    studio_server, celery_worker, alice, tiny
):
    job = submit(alice, tiny, steps=200)
    url, headers = f"{studio_server.ws_url}/ws/jobs/{job.pk}/", bearer(alice)

    async def go():
        async with connect(url, additional_headers=headers, open_timeout=10) as ws:
            step = 0
            while step < 3:
                message = json.loads(await asyncio.wait_for(ws.recv(), 60))
                step = message.get("step", 0) if message["type"] == "progress" else step
            latest = broadcast.latest(job.group_name)
            await ws.send(json.dumps({"type": "cancel"}))
            while not (message["type"] == "state" and message["job"]["status"] == "canceled"):
                message = json.loads(await asyncio.wait_for(ws.recv(), 60))
            return step, latest

    step, latest = run_async(go())
    assert latest["type"] == "job.progress" and latest["step"] >= step
    assert latest["attempt"] == 1 and latest["preview"].startswith("data:image/")
    assert broadcast.latest(job.group_name) is None  # the final message dropped it


def test_a_connection_joining_mid_run_gets_the_latest_step_with_its_preview(
    studio_server, alice, tiny
):
    job = submit(alice, tiny)
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, attempt=2, step=4)
    kept = {"type": "job.progress", "job": str(job.pk), "step": 4, "total": STEPS,
            "elapsed": 0.5, "preview": "data:image/webp;base64,UklGRg=="}
    broadcast.send(job.group_name, kept | {"attempt": 1}, keep=True)  # the reaped attempt's
    stale = watch(studio_server, job, bearer(alice), until_final=False, count=2, timeout=1)
    assert [m["type"] for m in stale] == ["state"]
    broadcast.send(job.group_name, kept | {"attempt": 2}, keep=True)
    state, latest = watch(studio_server, job, bearer(alice), until_final=False, count=2)
    assert state["type"] == "state" and state["job"]["step"] == 4
    assert latest == {k: v for k, v in kept.items() if k != "type"} | {
        "type": "progress", "attempt": 2
    }


def closing_connection(call):
    """`call`, closing the database connection it opened on its thread after it."""

    def run():
        try:
            call()
        finally:
            connection.close()

    return run


def watch_queue(server, job, headers, *changes):
    """Connect to a queued job's socket; after its first state, make each change (a sync call,
    run on a thread) and collect the queue position the socket sends next. The positions:
    the first state's, then one per change."""

    async def go():
        url = f"{server.ws_url}/ws/jobs/{job.pk}/"
        async with connect(url, additional_headers=headers, open_timeout=10) as ws:
            state = json.loads(await asyncio.wait_for(ws.recv(), 10))
            positions = [state["job"]["queue_position"]]
            for change in changes:
                await asyncio.to_thread(closing_connection(change))
                while True:
                    message = json.loads(await asyncio.wait_for(ws.recv(), 60))
                    if message["type"] == "queue":
                        assert message["job"] == str(job.pk)
                        positions.append(message["queue_position"])
                        break
            return positions

    return run_async(go())


def test_a_waiting_job_hears_its_new_place_when_jobs_are_submitted_or_canceled(
    studio_server, alice, bob, tiny
):
    first, second = submit(alice, tiny), submit(alice, tiny)
    positions = watch_queue(
        studio_server, second, bearer(alice),
        # bob's first job takes the turn after alice's first, ahead of her second
        lambda: submit(bob, tiny),
        lambda: services.job_cancel(job=first, actor=alice),
    )
    assert positions == [1, 2, 0]


def test_a_waiting_job_hears_its_new_place_when_a_worker_starts_the_one_ahead(
    studio_server, celery_worker, alice, tiny
):
    running = submit(alice, tiny, steps=400)
    assert wait_for(lambda: Job.objects.get(pk=running.pk).step >= 1)
    ahead, waiting = submit(alice, tiny), submit(alice, tiny)
    positions = watch_queue(
        studio_server, waiting, bearer(alice),
        # the run stops within a step, and the worker starts the job ahead
        lambda: services.job_cancel(job=running, actor=alice),
    )
    assert positions == [1, 0]
    assert Job.objects.get(pk=ahead.pk).status != Job.Status.QUEUED


def test_carol_cannot_watch_alices_job(studio_server, alice, carol, tiny):
    job = submit(alice, tiny)
    with pytest.raises(InvalidStatus):
        watch(studio_server, job, bearer(carol), until_final=False)


def test_anonymous_and_foreign_origin_connections_are_refused(
    studio_server, alice, tiny, client
):
    job = submit(alice, tiny)
    with pytest.raises(InvalidStatus):
        watch(studio_server, job, {"Origin": studio_server.url}, until_final=False)
    client.force_login(alice)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    with pytest.raises(InvalidStatus):
        watch(studio_server, job, {"Origin": "https://evil.example", "Cookie": cookie},
              until_final=False)
    ok = watch(studio_server, job, {"Origin": studio_server.url, "Cookie": cookie},
               until_final=False)
    assert ok[0]["job"]["id"] == str(job.pk)


def wait_for(predicate, timeout=60, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def test_a_killed_worker_job_is_redelivered_and_finishes_exactly_once(
    celery_queue, celery_worker, alice, tiny, settings
):
    job = submit(alice, tiny, steps=400)
    assert wait_for(lambda: Job.objects.get(pk=job.pk).step >= 2)
    os.killpg(celery_worker.proc.pid, signal.SIGKILL)  # the parent and its child, no goodbye
    celery_worker.proc.wait()
    settings.STUDIO_HEARTBEAT_TIMEOUT = 1
    time.sleep(1.5)
    report = services.jobs_reap(broker_backlog=broker_backlog())
    assert (report.requeued, report.resent) == (1, 1)
    celery_worker.start()
    assert wait_for(lambda: Job.objects.get(pk=job.pk).status == "succeeded", timeout=120)
    job.refresh_from_db()
    assert job.attempt == 2 and job.outputs.count() == 1


def run_to_the_end(job: Job) -> Job:
    assert wait_for(lambda: Job.objects.get(pk=job.pk).status in Job.FINISHED, timeout=120)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    return job


def test_a_worker_loads_the_default_model_before_its_first_job(celery_worker, alice, tiny):
    default = run_to_the_end(submit(alice, settings.STUDIO_DEFAULT_MODEL, width=64, height=64))
    other = run_to_the_end(submit(alice, tiny))
    assert default.timings["model_load"] == 0  # no job waited for the default model
    assert other.timings["model_load"] > 0  # any other model loads for its first job
    assert "preloaded the default model 'studio-demo'" in celery_worker.log.read_text()


def test_without_preload_the_first_job_loads_the_default_model(transactional_db, alice):
    worker = Worker(env={"STUDIO_WORKER_PRELOAD": "0"})
    worker.start()
    try:
        job = run_to_the_end(submit(alice, settings.STUDIO_DEFAULT_MODEL, width=64, height=64))
    finally:
        worker.stop()
    assert job.timings["model_load"] > 0


def test_watchers_hear_when_a_job_waits_for_its_model_to_load(
    studio_server, celery_queue, transactional_db, alice, tiny
):
    # The socket opens before any worker runs, so it hears the job from its claim on.
    worker, job, headers = Worker(), submit(alice, tiny), bearer(alice)

    async def go():
        url = f"{studio_server.ws_url}/ws/jobs/{job.pk}/"
        async with connect(url, additional_headers=headers, open_timeout=10) as ws:
            messages = [json.loads(await ws.recv())]
            await asyncio.to_thread(worker.start)
            while not (messages[-1]["type"] == "state"
                       and messages[-1]["job"]["status"] in Job.FINISHED):
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), 120)))
            return messages

    try:
        first = run_async(go())
        again = watch(studio_server, submit(alice, tiny), headers)
    finally:
        worker.stop()
    assert first[0]["job"]["status"] == "queued" and first[-1]["job"]["status"] == "succeeded"
    loading = [i for i, m in enumerate(first) if "loading_model" in m.get("job", {})]
    assert [(first[i]["job"]["status"], first[i]["job"]["loading_model"]) for i in loading] == [
        ("running", "tiny")
    ]
    assert loading[0] < first.index(progress(first)[0])  # before the first step
    assert not any("loading_model" in m.get("job", {}) for m in again)  # loaded by then


def test_a_watcher_connecting_while_the_model_loads_hears_so(
    studio_server, celery_queue, alice, tiny
):
    submit(alice, tiny)
    job = services.job_claim_next(worker="test")  # running, as a worker's claim leaves it
    runner.announce_loading(job, "tiny")
    state = watch(studio_server, job, bearer(alice), until_final=False)[0]
    assert state["job"]["status"] == "running" and state["job"]["loading_model"] == "tiny"


def drop_other_connections() -> int:
    """What a Postgres restart does to the worker's connections. Only the worker's: this
    process's own pool, emptied at once, takes psycopg_pool longer to refill (a second or so
    per connection lost) than the test's next query waits."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s",
            [WORKER_APPNAME],
        )
        return cursor.fetchone()[0]


def test_the_worker_replaces_kept_connections_that_postgres_dropped(celery_worker, alice, tiny):
    # The worker keeps its connection pool between jobs (CELERY_DB_REUSE_MAX); a restart of
    # Postgres, here its backends terminated, must cost no job.
    first = submit(alice, tiny)
    assert wait_for(lambda: Job.objects.get(pk=first.pk).status == "succeeded", timeout=120)
    assert drop_other_connections() >= 1
    second = submit(alice, tiny)
    assert wait_for(lambda: Job.objects.get(pk=second.pk).status == "succeeded", timeout=60)


def test_a_job_running_through_a_postgres_restart_keeps_its_heartbeat_and_finishes(
    celery_worker, alice, tiny
):
    job = submit(alice, tiny, steps=150)
    assert wait_for(lambda: Job.objects.get(pk=job.pk).step >= 2)
    assert drop_other_connections() >= 2  # the worker's claim and heartbeat connections
    seen = Job.objects.get(pk=job.pk).step
    # The heartbeat goes on, on a new connection, while the job still runs...
    assert wait_for(lambda: Job.objects.get(pk=job.pk).step > seen + 5)
    # ...and the images, made over the whole run, are stored by this same attempt.
    assert wait_for(lambda: Job.objects.get(pk=job.pk).status in Job.FINISHED, timeout=120)
    job.refresh_from_db()
    assert (job.status, job.attempt, job.outputs.count()) == ("succeeded", 1, 1)
