"""Models per host, with real workers: two worker processes named as on two hosts, each with
a model the other lacks (its own STUDIO_MODELS and models folder). Each job runs on a worker
that has its model, a message the other took is passed on rather than stranded, a model no
worker up has is refused at submit, and an operator drains a worker with Celery's stock
command line (docs/operations.md)."""

import os
import re
import subprocess
import sys
import time

import pytest
from django.conf import settings

from generation import recipes, services
from generation import worker_registry as registry
from generation.models import Job
from tests.conftest import ROOT, Worker, job_finished

# Each test uses the module's two worker processes (the `hosts` fixture).
pytestmark = pytest.mark.slow
STEPS = 4


def host_worker(host: str, models: dict[str, str], folder) -> Worker:
    """A worker as on host `host`: its node name says so, and it knows only `models`."""
    folder.mkdir()
    worker = Worker(env={
        "STUDIO_MODELS": ",".join(f"{name}={source}" for name, source in models.items()),
        "STUDIO_MODELS_DIR": str(folder), "STUDIO_WORKER_PRELOAD": "0",
    })
    worker.name = f"gpu0-{os.getpid()}@{host}"
    worker.log = worker.log.with_name(f"test-worker-{os.getpid()}-{host}.log")
    return worker


@pytest.fixture(scope="module")
def hosts(django_db_setup, django_db_blocker, tiny_model, tmp_path_factory):
    """Worker a (model only-a) and worker b (model only-b), for the module's tests."""
    root = tmp_path_factory.mktemp("hosts")
    a = host_worker("host-a.test", {"only-a": tiny_model}, root / "a")
    b = host_worker("host-b.test", {"only-b": tiny_model}, root / "b")
    a.start()
    b.start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture
def models(settings, tiny_model, transactional_db):
    """The web side knows every model, as the web server of such a deployment does."""
    settings.STUDIO_MODELS = {"only-a": tiny_model, "only-b": tiny_model, "tiny": tiny_model}


def submit(user, model, **params) -> Job:
    params = {"prompt": "red circle", "model": model, "steps": STEPS, "seed": 42,
              "width": 32, "height": 32, **params}
    return services.job_submit(user=user, recipe=recipes.recipe_from_params(params))


def registered(*workers: Worker, timeout: float = 60) -> dict[str, dict]:
    """The registry's entries once every one of `workers` is in it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = {worker["name"]: worker for worker in registry.live_workers()}
        if all(worker.name in live for worker in workers):
            return live
        time.sleep(0.2)
    raise AssertionError(f"not in the registry: {[worker.name for worker in workers]}")


def until(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


def control(*args: str) -> str:
    """Celery's own command line, as an operator runs it."""
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "studio", "control", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def test_each_worker_reports_the_models_it_can_load(hosts, models):
    a, b = hosts
    live = registered(a, b)
    assert "only-a" in live[a.name]["models"] and "only-b" not in live[a.name]["models"]
    assert "only-b" in live[b.name]["models"] and "only-a" not in live[b.name]["models"]
    assert live[a.name]["host"] == "host-a.test" and live[a.name]["device"] == "cpu"


def test_each_job_runs_on_a_worker_that_has_its_model(celery_queue, hosts, models, alice, bob):
    a, b = hosts
    registered(a, b)
    jobs = [submit(user, model, seed=seed) for seed, (user, model) in enumerate(
        [(alice, "only-a"), (bob, "only-b")] * 3)]
    for job in jobs:
        job = job_finished(job, timeout=120)
        expected = a.name if job.recipe["model"]["name"] == "only-a" else b.name
        assert (job.status, job.worker) == ("succeeded", expected)


def test_a_message_the_other_worker_takes_is_passed_on_not_stranded(
        celery_queue, hosts, models, alice, bob):
    """While a is busy, b takes the message of a's next job: it passes it on until a is
    free. Without that, the job would wait for the reaper, which these tests do not run."""
    a, b = hosts
    registered(a, b)
    passed = b.log.read_text().count("passed on")
    long = submit(alice, "only-a", steps=300)
    until(lambda: Job.objects.get(pk=long.pk).status == "running")
    follow = submit(bob, "only-a")
    until(lambda: b.log.read_text().count("passed on") > passed)
    assert job_finished(follow, timeout=180).worker == a.name
    assert job_finished(long).status == "succeeded"


def test_a_model_no_worker_up_has_is_refused_at_submit(hosts, models, alice):
    a, b = hosts
    registered(a, b)
    with pytest.raises(services.NoWorkerForModel) as refused:
        submit(alice, "tiny")
    # How many, not which: the workers' names are host names (another test's killed worker
    # may still count for a few seconds).
    assert "“tiny”" in str(refused.value) and re.search(r"\(\d+ workers up\)", str(refused.value))
    assert a.name not in str(refused.value)
    assert refused.value.errors.keys() == {"model"} and not Job.objects.exists()


def test_a_worker_stopped_cleanly_leaves_and_its_models_are_refused(hosts, models, alice):
    a, b = hosts
    registered(a, b)
    a.stop()
    try:
        assert a.name not in {worker["name"] for worker in registry.live_workers()}
        with pytest.raises(services.NoWorkerForModel):
            submit(alice, "only-a")
    finally:
        a.start()


def test_a_drained_worker_finishes_its_job_and_takes_no_new_one(celery_queue, hosts, models,
                                                                 alice, bob):
    """Draining b with Celery's stock command: its job ends, and the next job for b's model
    waits for a worker taking jobs that can load it: a, which shares these files (a worker
    on another host would not, and the job would wait for b, its page saying why)."""
    a, b = hosts
    registered(a, b)
    running = submit(alice, "only-b", steps=200)
    until(lambda: Job.objects.get(pk=running.pk).status == "running")
    assert "no longer consuming" in control("cancel_consumer", settings.STUDIO_QUEUE,
                                            "-d", b.name)
    until(lambda: registered(b)[b.name]["draining"], timeout=20)
    later = submit(bob, "only-b")  # queued, not refused: b may come back
    assert job_finished(running).status == "succeeded"
    assert job_finished(later).worker == a.name
    control("add_consumer", settings.STUDIO_QUEUE, "-d", b.name)
    until(lambda: not registered(b)[b.name]["draining"], timeout=20)
    assert job_finished(submit(bob, "only-b", seed=7)).worker == b.name
