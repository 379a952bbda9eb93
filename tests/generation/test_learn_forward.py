"""The /learn/ page's forward process: x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε in the model's latent
space, in one step from the VAE's x₀ (generation/engine/forward_process.py), and its door: who
may start one, on which picture, one in flight per user, run by a real worker."""

import io
import time

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from django.core.files.base import ContentFile
from django.urls import reverse
from PIL import Image

from generation import learn, learn_tasks, worker_registry
from generation.engine import forward_process as fp
from generation.engine.image_runs import decode
from generation.models import Job, Output

from ..conftest import Worker
from .conftest import picture, png_bytes

URL = "/learn/forward/"


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r over all values, the mean of each channel (an image's last axis; a flat
    array is one channel) taken out first."""
    axes = tuple(range(max(a.ndim - 1, 1)))
    a, b = a - a.mean(axis=axes), b - b.mean(axis=axes)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def latents(pipe, seed: int = 0):
    """x₀ of the test picture and the noise the engine draws for `seed`."""
    x0 = fp.encode(pipe, picture(), fp.pipeline_spec(pipe).native_size)
    noise = torch.randn(x0.shape, generator=torch.Generator("cpu").manual_seed(seed))
    return x0, noise


# --- The engine -------------------------------------------------------------------------------


def test_x_t_is_what_diffusers_add_noise_makes_from_the_schedule(tiny_pipeline):
    x0, noise = latents(tiny_pipeline)
    alpha_bars = fp.scheduler_alpha_bars(tiny_pipeline)
    ddpm = DDPMScheduler.from_config(tiny_pipeline.scheduler.config)
    for t in (0, 1, 250, 500, 999):
        expected = ddpm.add_noise(x0, noise, torch.tensor([t]))
        torch.testing.assert_close(fp.noised(x0, noise, float(alpha_bars[t])), expected,
                                   atol=1e-5, rtol=1e-5)


def test_the_schedule_is_the_models_own(tiny_pipeline):
    from generation.engine import load_spec

    config = load_spec(tiny_pipeline.name_or_path).scheduler_config
    ours = learn.model_schedule("tiny", config).alpha_bar
    np.testing.assert_allclose(fp.scheduler_alpha_bars(tiny_pipeline).numpy(), ours, atol=2e-6)


def test_at_the_last_timestep_x_t_is_nearly_all_noise(tiny_pipeline):
    x0, noise = latents(tiny_pipeline)
    last = float(fp.scheduler_alpha_bars(tiny_pipeline)[-1])
    x_t = fp.noised(x0, noise, last).numpy().ravel()
    assert abs(correlation(x_t, x0.numpy().ravel())) < 0.05
    assert correlation(x_t, noise.numpy().ravel()) > 0.999


def test_at_t_0_the_frame_is_the_vae_round_trip_of_the_picture(tiny_pipeline):
    frames = fp.forward_frames(tiny_pipeline, picture(), timesteps=[0, 999], seed=3)
    with torch.no_grad():
        round_trip = decode(tiny_pipeline, fp.encode(tiny_pipeline, picture(), frames.size))[0]
    first, last = (np.abs(pixels(image) - pixels(round_trip)).mean() for image in frames.images)
    assert first < 3  # levels of 255: ᾱ_0 leaves 0.6% of ε's scale
    assert first < last / 5


def test_the_same_seed_gives_the_same_frames_and_another_seed_others(tiny_pipeline):
    def frames(seed: int) -> list[bytes]:
        run = fp.forward_frames(tiny_pipeline, picture(), timesteps=[0, 500, 999], seed=seed)
        return [image.tobytes() for image in run.images]

    first = frames(7)
    assert frames(7) == first
    other = frames(8)
    assert other[1:] != first[1:]


def test_the_picture_is_cropped_to_a_square_of_the_models_native_size(tiny_pipeline):
    done = []
    frames = fp.forward_frames(tiny_pipeline, picture(48, 20), timesteps=[0, 999], seed=0,
                                on_frame=lambda k, total: done.append((k, total)))
    assert frames.size == fp.pipeline_spec(tiny_pipeline).native_size == 32
    assert [image.size for image in frames.images] == [(32, 32)] * 2
    assert frames.timesteps == [0, 999] and frames.train_steps == 1000
    assert frames.alpha_bars[0] > 0.99 > 1e-3 > frames.alpha_bars[1]
    assert done == [(1, 2), (2, 2)]


def test_a_timestep_outside_the_schedule_is_refused(tiny_pipeline):
    with pytest.raises(ValueError, match="outside 0 … 999"):
        fp.forward_frames(tiny_pipeline, picture(), timesteps=[0, 1000], seed=0)


def test_frames_are_sent_as_small_webp_data_urls():
    url = fp.frame_data_url(Image.new("RGB", (512, 300), "red"))
    image = Image.open(io.BytesIO(__import__("base64").b64decode(url.split(",", 1)[1])))
    assert url.startswith("data:image/webp;base64,")
    assert (image.format, image.size) == ("WEBP", (256, 150))


def test_the_demo_models_circle_dissolves_into_noise(demo_pipeline):
    circle = learn_tasks._picture(0, learn_tasks.Source("demo"))
    frames = fp.forward_frames(demo_pipeline, circle, timesteps=[0, 500, 999], seed=0)
    start, middle, end = (correlation(pixels(i), pixels(circle)) for i in frames.images)
    assert start > 0.95
    assert abs(end) < 0.3
    assert start > middle > end


def test_the_panel_computes_46_frames_with_the_strip_of_ten_among_them():
    frames, strip = learn.forward_timesteps(1000)
    assert len(frames) == 46 and frames[0] == 0 and frames[-1] == 999
    assert [frames[k] for k in strip] == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    short, strip = learn.forward_timesteps(12)
    assert short == list(range(12)) and len(strip) == 10


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


@pytest.mark.django_db
def test_another_picture_replaces_one_that_has_not_started(
    client, alice, celery_queue, django_capture_on_commit_callbacks
):
    client.force_login(alice)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(URL, {"source": "demo", "seed": "1"})
        client.post(URL, {"source": "demo", "seed": "2"})
    assert client.get(URL, {"seed": "1"}).json()["status"] == "superseded"
    assert client.get(URL, {"seed": "2"}).json()["status"] == "queued"
    assert celery_queue.backlog() == 2  # the first's message will find it superseded


@pytest.mark.django_db
def test_one_forward_process_runs_at_a_time_per_user(client, alice, bob, media):
    client.force_login(alice)
    client.post(URL, {"seed": "1"})
    started = learn_tasks.forward_request(user=alice, data={"seed": "1"})
    computation = learn_tasks.cache.get(started.key)["id"]
    assert learn_tasks._claim(computation, learn_tasks._progress(0, 0), 60)  # a worker's
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
def test_a_superseded_computation_does_nothing_on_the_worker_and_a_failed_one_starts_again(
    client, alice
):
    client.force_login(alice)
    client.post(URL, {"seed": "1"})
    computation = learn_tasks.cache.get(
        learn_tasks.forward_request(user=alice, data={"seed": "1"}).key)["id"]
    client.post(URL, {"seed": "2"})  # supersedes it
    ran = learn_tasks.forward_run(computation=computation, user_id=alice.pk, model="m",
                                  model_source="nowhere", source="demo", seed=1)
    assert ran == "not claimed"
    assert learn_tasks._state(computation) == {"status": "superseded"}

    learn_tasks._put(computation, {"status": "failed", "error": "e"}, 60)
    assert client.get(URL, {"seed": "1"}).json()["status"] == "failed"
    again = client.post(URL, {"seed": "1"}).json()
    assert again["status"] == "queued"


@pytest.mark.django_db
def test_the_page_offers_the_users_images_then_the_demo_picture(client, alice, bob, media):
    mine, theirs = output_of(alice), output_of(bob)
    client.force_login(alice)
    page = client.get(reverse("learn")).content.decode()
    assert page.index(f'value="image:{mine.pk}"') < page.index('value="demo"')
    assert str(theirs.pk) not in page
    assert page.count("<span>t = ") == 10 and "<span>t = 999</span>" in page


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
