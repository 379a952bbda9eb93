"""Workers with no shared disk (docs/operations.md): two worker processes, each in a
working directory and with a MEDIA_ROOT of its own, as if on two hosts, against one Postgres,
one Redis and one S3-compatible store (moto's server on loopback, tests/s3_server.py).

Jobs from both are stored in the bucket and served by the web server (the live server here,
which shares neither folder); when one worker is killed mid-job, the reaper requeues the job
and the other finishes it, with exactly one set of files, written over whatever the lost run
may have left; and nothing is ever written to either worker's folders.
"""

import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

from django.test import Client

from gallery.models import Image
from generation import recipes, services
from generation.models import Job
from generation.workers import broker_backlog
from tests.conftest import Worker

LONG = 400  # steps: seconds on the tiny model, time to act while it runs
SHORT = 4


def submit(user, model, steps: int, seed: int) -> Job:
    params = {"prompt": "red circle", "model": model, "steps": steps, "seed": seed,
              "width": 32, "height": 32}
    return services.job_submit(user=user, recipe=recipes.recipe_from_params(params))


def wait_for(predicate, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def finished(job: Job) -> Job:
    assert wait_for(lambda: Job.objects.get(pk=job.pk).status in Job.FINISHED)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    return job


def running_step(job: Job) -> int:
    job = Job.objects.get(pk=job.pk)
    return job.step if job.status == "running" else -1


def files_in(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


def served(server, user, job: Job) -> bytes:
    """The job's image as the web server serves it to `user`."""
    client = Client()
    client.force_login(user)
    image = Image.objects.get(output__job=job)
    request = urllib.request.Request(f"{server.url}/images/{image.pk}.png", headers={
        "Cookie": f"sessionid={client.cookies['sessionid'].value}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.read()
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{error.code} for the image of job {job.pk}") from error


def test_two_workers_on_separate_disks_store_serve_and_finish_each_others_jobs(
    s3_media, studio_server, celery_queue, alice, tiny, tmp_path, settings
):
    hosts = [tmp_path / "host-a", tmp_path / "host-b"]
    workers = []
    for home in hosts:
        (home / "media").mkdir(parents=True)
        env = {**s3_media.env, "MEDIA_ROOT": str(home / "media"),
               "STUDIO_MODELS": f"{tiny}={settings.STUDIO_MODELS[tiny]}"}
        workers.append(Worker(env=env, cwd=home, label=home.name))
    try:
        for worker in workers:
            worker.start()
            assert os.readlink(f"/proc/{worker.proc.pid}/cwd") == str(worker.cwd)

        # A long job holds one worker, so the short job after it goes to the other.
        long = submit(alice, tiny, LONG, seed=1)
        assert wait_for(lambda: running_step(long) >= 1)
        short = submit(alice, tiny, SHORT, seed=2)
        jobs = [finished(long), finished(short)]
        assert {job.worker for job in jobs} == {worker.name for worker in workers}
        for job in jobs:
            key = f"outputs/{job.pk}/0.png"
            assert s3_media.objects(f"outputs/{job.pk}/") == [key]
            assert served(studio_server, alice, job) == s3_media.read(key)

        # kill -9 the worker running a job, parent and child, mid-run.
        lost = submit(alice, tiny, LONG, seed=3)
        assert wait_for(lambda: running_step(lost) >= 2)
        lost.refresh_from_db()
        [gone] = [worker for worker in workers if worker.name == lost.worker]
        [other] = [worker for worker in workers if worker is not gone]
        os.killpg(gone.proc.pid, signal.SIGKILL)
        gone.proc.wait()
        # As if the lost run had stored its image just before it died: the retry must write
        # over it, not beside it.
        key = f"outputs/{lost.pk}/0.png"
        s3_media.server.client().put_object(Bucket=s3_media.bucket, Key=key,
                                            Body=b"left by the lost run")
        settings.STUDIO_HEARTBEAT_TIMEOUT = 1
        time.sleep(1.5)
        report = services.jobs_reap(broker_backlog=broker_backlog())
        assert (report.requeued, report.resent) == (1, 1)
        lost = finished(lost)
    finally:
        for worker in workers:
            worker.stop()

    assert (lost.attempt, lost.worker, lost.outputs.count()) == (2, other.name, 1)
    assert s3_media.objects(f"outputs/{lost.pk}/") == [key]
    image = served(studio_server, alice, lost)
    assert image.startswith(b"\x89PNG") and image == s3_media.read(key)
    for home in hosts:
        assert files_in(home) == [], f"{home.name} wrote to its own disk"
    assert files_in(s3_media.media_root) == []
