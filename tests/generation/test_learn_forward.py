"""The /learn/ page's forward process: x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε in the model's latent
space, in one step from the VAE's x₀ (generation/engine/forward_process.py), and its door: who
may start one, how often, on which picture, one in flight and one message in the queue per
user; a worker that has the model computes it, one whose worker fell silent fails; run by a
real worker."""

import json
import time
import uuid

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse
from PIL import Image

from generation import learn, learn_states, learn_tasks, worker_registry
from generation.models import Job, Output

from ..conftest import Worker
from .conftest import picture, png_bytes

URL = "/learn/forward/"


# --- The door -----------------------------------------------------------------------------


def output_of(user, image: Image.Image | None = None) -> Output:
    job = Job.objects.create(owner=user, recipe={"prompt": "p"}, status="succeeded")
    output = Output(job=job, index=0, recipe={"prompt": "p", "seed": 1}, width=32, height=32)
    output.image.save("0.png", ContentFile(png_bytes(image or picture())), save=False)
    output.save()
    return output


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.mark.django_db
def test_it_needs_a_login(client):
    assert client.get(URL).status_code == 302
    assert client.post(URL, {"source": "demo"}).status_code == 302


@pytest.mark.django_db
def test_it_only_allows_get_and_post(client, alice):
    client.force_login(alice)
    assert client.put(URL).status_code == 405


@pytest.mark.django_db
@pytest.mark.parametrize(("fields", "field"), [
    ({"model": "nope"}, "model"),
    ({"seed": "x"}, "seed"),
    ({"seed": "-1"}, "seed"),
    ({"seed": "9" * 40}, "seed"),
    ({"source": "image:not-a-uuid"}, "source"),
    ({"source": "upload:abc"}, "source"),
    ({"source": "elsewhere"}, "source"),
], ids=["model", "seed-text", "seed-negative", "seed-huge", "image-id", "upload-id", "kind"])
def test_it_validates_each_field_naming_it(client, alice, fields, field):
    client.force_login(alice)
    for response in (client.post(URL, fields), client.get(URL, fields)):
        assert response.status_code == 400
        assert set(response.json()["errors"]) == {field}


@pytest.mark.django_db
def test_a_model_no_worker_up_can_load_is_refused_as_a_job_would_be(client, alice):
    worker_registry.report("gpu0@elsewhere.test", models=["sdxl"], holds=[], device="cuda")
    try:
        client.force_login(alice)
        response = client.post(URL, {"source": "demo"})
    finally:
        worker_registry.withdraw("gpu0@elsewhere.test")
    assert response.status_code == 400
    assert "No worker that is up can load" in response.json()["errors"]["model"]


@pytest.mark.django_db
def test_it_validates_ownership_of_the_picture(client, alice, bob, media):
    theirs = output_of(bob)
    client.force_login(alice)
    response = client.post(URL, {"source": f"image:{theirs.pk}"})
    assert response.status_code == 400
    assert response.json()["errors"] == {"source": "You have no such image."}


@pytest.mark.django_db
def test_an_upload_is_checked_before_it_is_read(client, alice, media, settings):
    client.force_login(alice)
    text = ContentFile(b"not an image at all", name="x.png")
    response = client.post(URL, {"image": text})
    assert response.status_code == 400 and "image" in response.json()["errors"]
    settings.STUDIO_INPUT_MAX_PIXELS = 100
    big = ContentFile(png_bytes(picture(32, 32)), name="big.png")
    response = client.post(URL, {"image": big})
    assert response.status_code == 400
    assert "pixels" in response.json()["errors"]["image"]
    settings.STUDIO_INPUT_MAX_BYTES = 100
    heavy = ContentFile(png_bytes(picture(8, 8)) + b"\0" * 100, name="heavy.png")
    response = client.post(URL, {"image": heavy})
    assert response.status_code == 400
    assert "the most is 100" in response.json()["errors"]["image"]
    assert not alice.input_images.exists()


@pytest.mark.django_db
def test_starts_past_the_jobs_allowance_a_minute_are_refused_before_anything_is_read(
    client, alice, bob, media, settings, monkeypatch, celery_queue,
    django_capture_on_commit_callbacks
):
    settings.STUDIO_MAX_SUBMITS_PER_MINUTE = 2
    monkeypatch.setattr(learn_tasks, "_minute", lambda: (12345, 17))
    client.force_login(alice)
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(URL, {"seed": "1"}).status_code == 200
        assert client.post(URL, {"seed": "2"}).status_code == 200
        upload = ContentFile(png_bytes(picture()), name="mine.png")
        refused = client.post(URL, {"seed": "3", "image": upload})
        assert client.post(URL, {"seed": "x"}).status_code == 429  # before its fields too
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "17"
    assert "more than 2 forward processes this minute" in refused.json()["errors"]["__all__"]
    assert not alice.input_images.exists()  # never decoded nor stored
    assert celery_queue.backlog() == 1
    assert client.get(URL, {"seed": "2"}).json()["status"] == "queued"  # reading is free
    monkeypatch.setattr(learn_tasks, "_minute", lambda: (12346, 60))
    assert client.post(URL, {"seed": "2"}).status_code == 200  # the next minute's
    client.force_login(bob)
    assert client.post(URL, {"seed": "1"}).status_code == 200  # each user has their own


@pytest.mark.django_db
def test_a_start_waits_in_the_queue_and_is_found_again(
    client, alice, celery_queue, django_capture_on_commit_callbacks
):
    client.force_login(alice)
    with django_capture_on_commit_callbacks(execute=True):
        first = client.post(URL, {"source": "demo", "seed": "4"})
        again = client.post(URL, {"source": "demo", "seed": "4"})
    assert first.status_code == again.status_code == 200
    assert first.json() | {"waiting": 0} == {"status": "queued", "waiting": 0,
                                             "model": "studio-demo", "source": "demo", "seed": 4}
    assert celery_queue.backlog() == 1  # one message: the second request found the first
    polled = client.get(URL, {"source": "demo", "seed": "4"})
    assert polled.json()["status"] == "queued"
    unknown = client.get(URL, {"source": "demo", "seed": "5"})
    assert unknown.status_code == 404 and unknown.json() == {"status": "none"}


def computation_of(user, seed: int) -> str:
    return learn_tasks.cache.get(
        learn_tasks.forward_request(user=user, data={"seed": str(seed)}).key)["id"]


@pytest.mark.django_db
def test_another_picture_replaces_one_that_waits_and_its_message_computes_the_latest(
    client, alice, bob, celery_queue, django_capture_on_commit_callbacks
):
    client.force_login(alice)
    with django_capture_on_commit_callbacks(execute=True):
        for seed in range(1, 6):
            assert client.post(URL, {"source": "demo", "seed": str(seed)}).status_code == 200
    assert [client.get(URL, {"seed": str(seed)}).json()["status"] for seed in range(1, 6)] \
        == ["superseded"] * 4 + ["queued"]
    assert celery_queue.backlog() == 1  # one message waits, whatever the user asked since
    # A worker takes it: it computes the latest wish, and the next one needs a message again.
    assert learn_states.take(alice.pk)["computation"] == computation_of(alice, 5)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(URL, {"seed": "6"})
        client.post(URL, {"seed": "7"})
        client.force_login(bob)
        client.post(URL, {"seed": "1"})
    assert celery_queue.backlog() == 3  # alice's two, bob's own
    assert client.get(URL, {"seed": "1"}).json()["status"] == "queued"


@pytest.mark.django_db
def test_one_forward_process_runs_at_a_time_per_user(client, alice, bob, media):
    client.force_login(alice)
    client.post(URL, {"seed": "1"})
    assert learn_states.claim(computation_of(alice, 1), learn_states.progress(0, 0))
    refused = client.post(URL, {"seed": "2"})
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "3"
    assert set(refused.json()["errors"]) == {"source"}
    assert client.post(URL, {"seed": "1"}).json()["status"] == "running"  # the same one
    upload = ContentFile(png_bytes(picture()), name="mine.png")
    assert client.post(URL, {"seed": "1", "image": upload}).status_code == 429
    assert not alice.input_images.exists()  # refused before it was stored
    client.force_login(bob)
    assert client.post(URL, {"seed": "2"}).status_code == 200  # someone else's is theirs


@pytest.mark.django_db
def test_a_message_whose_wish_was_claimed_does_nothing_and_a_failed_one_starts_again(
    client, alice
):
    client.force_login(alice)
    client.post(URL, {"seed": "1"})
    first = computation_of(alice, 1)
    client.post(URL, {"seed": "2"})  # supersedes it
    assert learn_states.state(first) == {"status": "superseded"}
    wanted = computation_of(alice, 2)
    assert learn_states.claim(wanted, learn_states.progress(0, 0))  # another delivery's
    assert learn_tasks.forward_run(user_id=alice.pk) == "not claimed"
    assert learn_states.state(wanted)["status"] == "running"

    learn_states.put(wanted, {"status": "failed", "error": "e"})
    assert client.get(URL, {"seed": "2"}).json()["status"] == "failed"
    again = client.post(URL, {"seed": "2"}).json()
    assert again["status"] == "queued"
    assert computation_of(alice, 2) != wanted


@pytest.mark.django_db
def test_a_computation_whose_worker_fell_silent_fails_and_starts_again(
    client, alice, monkeypatch
):
    """Written as a worker writes it (claim, a frame's report), then silent for longer than
    RUNNING_SECONDS: it reads as failed, never as waiting, and asking again starts it."""
    monkeypatch.setattr(learn_states, "RUNNING_SECONDS", 1)
    client.force_login(alice)
    client.post(URL, {"seed": "1"})
    computation = computation_of(alice, 1)
    assert learn_states.take(alice.pk)["computation"] == computation
    assert learn_states.claim(computation, learn_states.progress(0, 0))
    learn_states.put(computation, learn_states.progress(5, 46))
    running = client.get(URL, {"seed": "1"}).json()
    assert running == {"status": "running", "done": 5, "total": 46, "model": "studio-demo",
                       "source": "demo", "seed": 1}
    time.sleep(1.2)
    failed = client.get(URL, {"seed": "1"}).json()
    assert failed["status"] == "failed"
    assert failed["error"] == ("The worker computing this stopped responding; show it again "
                               "to retry.")
    assert client.post(URL, {"seed": "2"}).status_code == 200  # it holds no turn
    assert client.post(URL, {"seed": "1"}).json()["status"] == "queued"
    assert computation_of(alice, 1) != computation
    assert learn_states.wanted(alice.pk)["computation"] == computation_of(alice, 1)


@pytest.mark.django_db
def test_the_page_offers_the_users_images_then_the_demo_picture(client, alice, bob, media):
    mine, theirs = output_of(alice), output_of(bob)
    client.force_login(alice)
    page = client.get(reverse("learn")).content.decode()
    assert page.index(f'value="image:{mine.pk}"') < page.index('value="demo"')
    assert str(theirs.pk) not in page
    assert page.count("<span>t = ") == 10 and "<span>t = 999</span>" in page


# --- Which worker computes it ---------------------------------------------------------------


def wish(user, model: str, model_source: str) -> dict:
    """A wish as a request writes it, for a model a request could not name here."""
    return {"computation": uuid.uuid4().hex, "user_id": user.pk, "model": model,
            "model_source": model_source, "source": "demo", "seed": 0}


@pytest.mark.django_db
def test_a_worker_loads_its_own_copy_of_a_model_the_web_server_found_elsewhere(alice, tiny):
    """As a job's recipe does (runner._recipe): the web server's path is not on this host,
    so the worker loads the model of that name from its own registry."""
    wanted = wish(alice, tiny, "/srv/the-web-servers-disk/tiny")
    learn_states.want(alice.pk, wanted)
    assert learn_tasks.forward_run(user_id=alice.pk) == "done"
    state = learn_states.state(wanted["computation"])
    assert state["size"] == 32 and len(state["frames"]) == 46


@pytest.fixture
def a_worker_without_far(monkeypatch):
    """This process as a worker taking jobs that cannot load the model "far", and another
    worker up that lists it."""
    here = worker_registry._ThisWorker(node="gpu0@here.test", holds=lambda source: False,
                                       device="cpu", models={"studio-demo": "demo"})
    monkeypatch.setattr(worker_registry, "_this", here)
    worker_registry.report("gpu0@here.test", models=["studio-demo"], holds=[], device="cpu")
    worker_registry.report("gpu1@elsewhere.test", models=["far"], holds=[], device="cuda")
    yield
    worker_registry.withdraw("gpu0@here.test")
    worker_registry.withdraw("gpu1@elsewhere.test")


@pytest.mark.django_db
def test_a_worker_without_the_model_passes_it_on_to_one_that_has_it_or_fails_it(
    alice, celery_queue, a_worker_without_far
):
    wanted = wish(alice, "far", "/srv/elsewhere/far")
    assert learn_states.want(alice.pk, wanted)  # its message: the one this worker took
    assert learn_tasks.forward_run(user_id=alice.pk) == "passed on"
    assert learn_states.state(wanted["computation"]) is None  # it still waits
    assert celery_queue.backlog() == 1
    message = json.loads(celery_queue.redis.lindex(celery_queue.name, 0))
    assert message["headers"]["task"] == learn_tasks.FORWARD_TASK
    assert message["headers"]["eta"] is not None  # after a short delay, not at once
    assert not learn_states.want(alice.pk, wanted)  # one message of theirs waits again

    worker_registry.withdraw("gpu1@elsewhere.test")  # no worker up has it now
    assert learn_tasks.forward_run(user_id=alice.pk) == "failed"
    assert learn_states.state(wanted["computation"])["error"] == (
        "No worker that is up can load the model “far”: the one that took this does not "
        "have it, and none that has it takes work now.")
    assert celery_queue.backlog() == 1


# --- A real worker ------------------------------------------------------------------------


def wait_done(client, fields: dict, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(URL, fields).json()
        if state["status"] not in ("queued", "running"):
            return state
        time.sleep(0.2)
    raise AssertionError(f"still {state} after {timeout}s")


def test_a_worker_computes_the_frames_of_an_upload_and_says_why_one_failed(
    transactional_db, client, alice, tiny, media
):
    """Sent while no worker is up, a computation waits in the queue; its picture deleted
    meanwhile, the worker fails it saying why. An upload is stored as the user's input and
    read back by a real worker from the same media folder."""
    client.force_login(alice)
    doomed = output_of(alice)
    fields = {"model": tiny, "source": f"image:{doomed.pk}", "seed": "0"}
    assert client.post(URL, fields).json()["status"] == "queued"
    doomed.delete()
    worker = Worker(env={"MEDIA_ROOT": str(media)})
    worker.start()
    try:
        failed = wait_done(client, fields)
        assert failed["status"] == "failed"
        assert failed["error"] == ("The picture is no longer stored: it was deleted since it "
                                   "was chosen.")

        upload = ContentFile(png_bytes(picture(40, 32)), name="mine.png")
        started = client.post(URL, {"model": tiny, "seed": "3", "image": upload}).json()
        assert started["source"].startswith("upload:")
        state = wait_done(client, {"model": tiny, "source": started["source"], "seed": "3"})
        assert state["status"] == "done", state
        assert [frame["t"] for frame in state["frames"]] == learn.forward_timesteps(1000)[0]
        assert [state["frames"][k]["t"] for k in state["strip"]][::9] == [0, 999]
        assert state["size"] == 32 and state["steps"] == 1000
        assert all(f["image"].startswith("data:image/webp;base64,") for f in state["frames"])
        assert state["frames"][0]["alpha_bar"] > 0.99 > 1e-3 > state["frames"][-1]["alpha_bar"]
    finally:
        worker.stop()
