"""The worker's sidecar process (generation/sidecar.py), driven the way a worker drives it, on
the real Postgres and Redis: it reports steps, carries the cancel back, survives a Postgres
hiccup, fails a run loudly and ends with its worker."""

import base64
import dataclasses
import io
import os
import threading
import time

import numpy as np
import PIL.Image
import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from generation import broadcast, engine, sidecar
from generation.models import Job

pytestmark = pytest.mark.django_db(transaction=True)  # the sidecar reads committed rows


@pytest.fixture
def running_job(alice):
    return Job.objects.create(
        owner=alice, recipe={"steps": 4}, total_steps=4, attempt=1, status=Job.Status.RUNNING,
        started_at=timezone.now(), heartbeat=timezone.now(),
    )


@pytest.fixture
def previews(make_recipe, tiny_pipeline) -> list:
    """Four real step previews from the engine."""
    calls = []
    engine.generate(make_recipe(steps=4), pipeline=tiny_pipeline,
                    on_step=lambda *args: calls.append(args))
    return [preview for _, _, preview, _ in calls]


@pytest.fixture
def side():
    car = sidecar.Sidecar()
    yield car
    car.close()


class Unrenderable:
    """A preview whose drawing fails, as a bug in it would."""

    def render(self) -> bytes:
        raise ValueError("no pixels")


def wait_for(condition, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def exited(pid: int) -> bool:
    return wait_for(lambda: os.waitpid(pid, os.WNOHANG)[0] != 0)


def test_every_step_is_published_its_heartbeat_written_and_frames_kept(
    side, running_job, previews
):
    run = side.begin(running_job)
    for step, preview in enumerate(previews, start=1):
        run.step(step, 4, preview, step * 0.1)
        assert run.should_stop() is False
    trajectory = run.end()
    running_job.refresh_from_db()
    assert running_job.step == 4 and running_job.status == Job.Status.RUNNING
    assert [frame["step"] for frame in trajectory] == [1, 2, 3, 4]
    assert trajectory[-1]["image"] == sidecar.preview_url(previews[-1])
    latest = broadcast.latest(running_job.group_name)
    assert latest["step"] == 4 and latest["attempt"] == 1
    assert latest["preview"] == trajectory[-1]["image"]


def test_a_cancel_found_by_the_heartbeat_stops_the_run(side, running_job, previews):
    run = side.begin(running_job)
    run.step(1, 4, previews[0], 0.1)
    assert wait_for(lambda: Job.objects.get(pk=running_job.pk).step == 1)
    assert run.should_stop() is False
    Job.objects.filter(pk=running_job.pk).update(cancel_requested=True)
    run.step(2, 4, previews[1], 0.2)
    assert wait_for(run.should_stop)
    run.end()
    assert Job.objects.get(pk=running_job.pk).step == 1  # a canceled job's row is not written


def test_a_step_that_cannot_be_reported_fails_the_run_with_its_reason(side, running_job):
    run = side.begin(running_job)
    run.step(1, 4, Unrenderable(), 0.1)
    with pytest.raises(sidecar.SidecarError, match="could not report step 1: no pixels"):
        wait_for(run.should_stop)
    run.end()
    # The same sidecar serves the next job as usual.
    again = side.begin(running_job)
    again.step(2, 4, None, 0.2)
    assert again.end() == [] and Job.objects.get(pk=running_job.pk).step == 2


def test_a_dead_sidecar_fails_the_run_and_the_next_job_gets_a_new_one(
    side, running_job, previews
):
    run = side.begin(running_job)
    first = side.pid
    os.kill(first, 9)
    assert exited(first)
    with pytest.raises(sidecar.SidecarError, match="sidecar process stopped"):
        for step in range(1, 200):  # a send may land in the socket buffer before it breaks
            run.step(step, 4, previews[0], 0.1)
            run.should_stop()
            time.sleep(0.01)
    assert run.end() == []
    run = side.begin(running_job)
    assert side.pid != first
    run.step(3, 4, previews[2], 0.3)
    assert [frame["step"] for frame in run.end()] == [3]


def test_the_sidecar_ends_with_its_worker(side, running_job):
    side.begin(running_job).end()
    pid = side.pid
    side.conn.close()  # what the worker process's exit does to its end of the socket
    assert exited(pid)
    side.pid = side.conn = None


def test_an_end_cut_short_gives_the_next_job_a_new_sidecar(side, running_job, previews):
    # A time limit can fire while the worker waits for the end: that job's messages must not
    # be read as the next job's.
    class TimeLimit(Exception):
        pass

    def interrupted(timeout=0.0):
        raise TimeLimit

    run = side.begin(running_job)
    first = side.pid
    run.step(1, 4, previews[0], 0.1)
    run.conn.poll = interrupted
    with pytest.raises(TimeLimit):
        run.end()
    assert side.pid is None  # stopped, and reaped
    again = side.begin(running_job)
    assert side.pid not in (None, first)
    again.step(2, 4, previews[1], 0.2)
    assert [frame["step"] for frame in again.end()] == [2]


def test_the_worker_sends_its_steps_while_the_sidecar_waits_on_postgres(
    side, running_job, previews
):
    # Steps come from the sampling thread: a heartbeat stuck behind a lock must not hold
    # sampling up, even with steps larger than the socket holds (a real size's arrays).
    big = np.zeros((1, 4, 96, 96), dtype=np.float32)  # 147 kB, twice a step
    preview = dataclasses.replace(previews[0], model_output=big, model_input=big)
    db = connection.settings_dict
    with psycopg.connect(dbname=db["NAME"], user=db["USER"], host=db["HOST"],
                         port=db["PORT"] or 5432) as other:
        other.execute("SELECT 1 FROM generation_job WHERE id = %s FOR UPDATE", [running_job.pk])
        run = side.begin(running_job)
        run.step(1, 12, previews[0], 0.1)
        waiting = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                   "AND query LIKE 'UPDATE %%generation_job%%'")
        with psycopg.connect(dbname=db["NAME"], user=db["USER"], host=db["HOST"],
                             port=db["PORT"] or 5432, autocommit=True) as look:
            assert wait_for(lambda: look.execute(waiting).fetchone()[0] == 1)
        sent = threading.Thread(target=lambda: [run.step(step, 12, preview, 0.1)
                                                for step in range(2, 13)])
        sent.start()
        sent.join(10)
        assert not sent.is_alive()  # 3.2 MB sent while the heartbeat waits
        assert Job.objects.get(pk=running_job.pk).step == 0
    trajectory = run.end()  # the lock went with the other connection
    assert len(trajectory) == 12 and Job.objects.get(pk=running_job.pk).step == 12


def test_a_step_cut_short_gives_the_next_job_a_new_sidecar(side, running_job, previews):
    # A step is sent on the sampling thread, where a time limit can fire mid-message.
    class TimeLimit(Exception):
        pass

    run = side.begin(running_job)
    first = side.pid
    run.step(1, 4, previews[0], 0.1)
    send = run.conn.send

    def interrupted(message):
        run.conn.send = send  # once
        raise TimeLimit

    run.conn.send = interrupted
    with pytest.raises(TimeLimit):
        run.step(2, 4, previews[1], 0.2)
    assert side.pid is None  # stopped, and reaped
    assert run.end() == []
    again = side.begin(running_job)
    assert side.pid not in (None, first)
    again.step(3, 4, previews[2], 0.3)
    assert [frame["step"] for frame in again.end()] == [3]


@pytest.mark.parametrize("fmt", ["WEBP", "PNG", "JPEG"])
def test_a_preview_url_names_the_format_it_was_drawn_in(previews, fmt):
    preview = dataclasses.replace(previews[0], options=engine.Previews(format=fmt))
    kind, data = sidecar.preview_url(preview).split(",", 1)
    assert kind == f"data:image/{fmt.lower()};base64"
    with PIL.Image.open(io.BytesIO(base64.b64decode(data))) as image:
        assert image.format == fmt
