"""An image of a batch tells nothing about its siblings: its page replays its own denoising
alone, and a reproduction (which re-runs the whole batch) keeps and shows only the image
asked about, through every door its job's images leave by."""

import asyncio
import base64
import importlib
import io
import json
import shutil
import time

import numpy as np
import pytest
from django.apps import apps
from django.conf import settings
from django.core.files.base import ContentFile
from django.urls import reverse
from django.utils import timezone
from PIL import Image as PILImage
from websockets.asyncio.client import connect

from gallery import services as gallery
from gallery.models import Image, Reproduction, Visibility
from generation import broadcast, engine, recipes, services, sidecar
from generation.models import Job, Output
from tests.conftest import Worker, job_finished, run_async
from tests.generation.test_jobs_live import bearer, progress

from .conftest import png_bytes, recipe_for

# The tiny model's VAE scales by 4: a 32-pixel image previews at 8 latent pixels a side.
SIZE, PREVIEW = 32, 8


def pixels(data_url: str) -> np.ndarray:
    with PILImage.open(io.BytesIO(base64.b64decode(data_url.partition(",")[2]))) as picture:
        return np.asarray(picture.convert("RGB"))


def png_pixels(response) -> np.ndarray:
    with PILImage.open(io.BytesIO(b"".join(response.streaming_content))) as picture:
        return np.asarray(picture.convert("RGB"))


def page_frames(page: str) -> list[dict]:
    """The trajectory the image page embeds for its scrubber."""
    start = page.index('<script id="trajectory" type="application/json">')
    return json.loads(page[page.index(">", start) + 1 : page.index("</script>", start)])


def wait_for(job: Job, timeout: float = 120) -> Job:
    job = job_finished(job, timeout)
    assert job.status == Job.Status.SUCCEEDED, job.error
    return job


@pytest.fixture
def stored_jobs():
    """The worker writes to the real media folder; remove what these jobs stored there."""
    jobs = []
    yield jobs
    for job_id in jobs:
        shutil.rmtree(settings.MEDIA_ROOT / "outputs" / str(job_id), ignore_errors=True)


@pytest.fixture
def worker(transactional_db):
    started = Worker()
    yield started
    started.stop()


def alice_batch(alice, tiny, stored_jobs, *, public: int) -> tuple[Image, Image]:
    """alice's batch of two, run by the worker; the image at `public` published, the other
    left private. Returns (public, private)."""
    recipe = recipes.recipe_from_params({"prompt": "red circle", "model": tiny, "steps": 6,
                                         "seed": 42, "width": SIZE, "height": SIZE,
                                         "batch_size": 2})
    job = services.job_submit(user=alice, recipe=recipe)
    stored_jobs.append(job.pk)
    wait_for(job)
    shown = Image.objects.get(output__job=job, output__index=public)
    gallery.image_set_visibility(image=shown, actor=alice, visibility=Visibility.PUBLIC)
    return shown, Image.objects.get(output__job=job, output__index=1 - public)


def test_a_public_images_page_replays_its_own_denoising_alone(
    worker, alice, carol, tiny, client, stored_jobs
):
    worker.start()
    shown, private = alice_batch(alice, tiny, stored_jobs, public=0)
    client.force_login(carol)
    frames = page_frames(client.get(shown.get_absolute_url()).content.decode())
    assert client.get(private.get_absolute_url()).status_code == 404
    assert [frame["step"] for frame in frames] == list(range(1, 7))
    assert all(pixels(frame["image"]).shape == (PREVIEW, PREVIEW, 3) for frame in frames)
    client.force_login(alice)
    siblings = page_frames(client.get(private.get_absolute_url()).content.decode())
    assert not np.array_equal(pixels(frames[-1]["image"]), pixels(siblings[-1]["image"]))
    assert not {frame["image"] for frame in frames} & {frame["image"] for frame in siblings}


def watch_from_the_queue(server, job: Job, headers: dict, start) -> list[dict]:
    """Connect to the queued job's socket, then `start` (the worker, on a thread), and collect
    every message until the job's final state: every preview the watcher is sent."""

    async def go():
        url = f"{server.ws_url}/ws/jobs/{job.pk}/"
        async with connect(url, additional_headers=headers, open_timeout=10) as ws:
            messages = [json.loads(await asyncio.wait_for(ws.recv(), 10))]
            assert messages[0]["job"]["status"] == Job.Status.QUEUED
            await asyncio.to_thread(start)
            while not (messages[-1]["type"] == "state"
                       and messages[-1]["job"]["status"] in Job.FINISHED):
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), 120)))
            return messages

    return run_async(go())


def test_a_stranger_reproducing_a_public_image_gets_that_image_alone(
    studio_server, worker, alice, carol, tiny, client, stored_jobs
):
    worker.start()
    shown, private = alice_batch(alice, tiny, stored_jobs, public=1)
    worker.stop()  # carol's reproduction waits in the queue until she watches it
    client.force_login(carol)
    client.post(reverse("image_reproduce", args=[shown.pk]))
    reproduction = Reproduction.objects.get(image=shown)
    stored_jobs.append(reproduction.job_id)
    messages = watch_from_the_queue(studio_server, reproduction.job, bearer(carol),
                                    worker.start)

    previews = [message["preview"] for message in progress(messages)]
    assert len(previews) == 6
    assert all(pixels(preview).shape == (PREVIEW, PREVIEW, 3) for preview in previews)
    final = messages[-1]["job"]
    assert final["status"] == "succeeded" and [i["id"] for i in final["images"]] == [
        str(reproduction.output.pk)]
    reproduction.refresh_from_db()
    assert (reproduction.verdict, reproduction.max_diff) == ("identical", 0)

    mine = Image.objects.filter(owner=carol)
    assert [image.output.index for image in mine] == [1]
    assert reproduction.job.outputs.count() == 1
    frames = mine.get().output.trajectory
    assert frames and all(pixels(f["image"]).shape == (PREVIEW, PREVIEW, 3) for f in frames)
    api = client.get(f"/api/v1/jobs/{reproduction.job_id}", headers=bearer(carol)).json()
    assert [image["index"] for image in api["images"]] == [1]
    copy = png_pixels(client.get(mine.get().get_file_url()))
    client.force_login(alice)
    assert np.array_equal(copy, png_pixels(client.get(shown.get_file_url())))
    assert not np.array_equal(copy, png_pixels(client.get(private.get_file_url())))


# --- The sidecar, without a worker: what it publishes and keeps of a batch -----------------


def batch_preview(step: int) -> engine.LatentPreview:
    """A step's preview of a batch of two different images."""
    latents = np.random.default_rng(step).standard_normal((2, 4, PREVIEW, PREVIEW))
    latents = latents.astype(np.float32)
    return engine.LatentPreview(
        model_output=latents, model_input=latents, alpha_bar=0.5, prediction_type="sample",
        latent_rgb=engine.LatentRGB(weights=((0.3, 0.2, 0.1),) * 4),
        options=engine.Previews(format="PNG"),
    )


def run_steps(job: Job, steps: int = 4) -> tuple[list[dict], list[dict]]:
    """The job's steps through a sidecar: what its watchers were sent, and the kept frames."""
    car = sidecar.Sidecar()
    try:
        run = car.begin(job)
        sent = []
        for step in range(1, steps + 1):
            run.step(step, steps, batch_preview(step), step * 0.1)
            deadline = time.monotonic() + 10
            while (latest := broadcast.latest(job.group_name) or {}).get("step") != step:
                assert time.monotonic() < deadline, f"step {step} was not published"
                time.sleep(0.01)
            sent.append(latest)
        return sent, run.end()
    finally:
        car.close()


def running(owner, **fields) -> Job:
    return Job.objects.create(
        owner=owner, recipe={"steps": 4, "batch_size": 2}, total_steps=4, attempt=1,
        status=Job.Status.RUNNING, started_at=timezone.now(), heartbeat=timezone.now(),
        **fields,
    )


@pytest.mark.django_db(transaction=True)
def test_each_kept_frame_shows_one_image_of_the_batch(alice):
    sent, frames = run_steps(running(alice))
    # The owner's own live view may show the batch side by side.
    assert all(pixels(m["preview"]).shape == (PREVIEW, 2 * PREVIEW, 3) for m in sent)
    assert [(f["step"], f["index"]) for f in frames] == [
        (step, index) for step in range(1, 5) for index in (0, 1)]
    last = batch_preview(4)
    for frame in frames[-2:]:
        assert pixels(frame["image"]).shape == (PREVIEW, PREVIEW, 3)
        assert frame["image"] == sidecar.preview_url(last, frame["index"])
    assert not np.array_equal(pixels(frames[-2]["image"]), pixels(frames[-1]["image"]))


@pytest.mark.django_db(transaction=True)
def test_a_job_revealing_one_image_publishes_and_keeps_nothing_of_the_others(carol):
    sent, frames = run_steps(running(carol, reveals=1))
    for step, message in enumerate(sent, start=1):
        assert message["preview"] == sidecar.preview_url(batch_preview(step), 1)
        assert pixels(message["preview"]).shape == (PREVIEW, PREVIEW, 3)
    assert {frame["index"] for frame in frames} == {1} and len(frames) == 4


# --- What was stored before: the migrations that apply the rule to it ---------------------


def migration(app: str, name: str):
    return importlib.import_module(f"{app}.migrations.{name}")


def strip(*colours, width: int = PREVIEW) -> str:
    """A frame as jobs stored them: the batch side by side, each image `width` wide."""
    picture = PILImage.new("RGB", (width * len(colours), PREVIEW))
    for index, colour in enumerate(colours):
        picture.paste(colour, (index * width, 0, (index + 1) * width, PREVIEW))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def old_job(owner, frames: list[str], size: int, **fields) -> Job:
    recipe = recipe_for("a red circle", batch_size=size)
    job = Job.objects.create(owner=owner, recipe=recipe, status=Job.Status.SUCCEEDED,
                             trajectory=[{"step": i, "image": f} for i, f in enumerate(frames)],
                             **fields)
    for index in range(size):
        output = Output.objects.create(
            job=job, index=index, image=ContentFile(png_bytes(), name=f"{index}.png"),
            recipe={**recipe, "batch_index": index}, width=8, height=8,
        )
        Image.objects.create(output=output, owner=owner, prompt="a red circle",
                             model_name="studio-demo", sampler="DDIM", seed=7 + index)
    return job


@pytest.mark.django_db
def test_a_batchs_old_frames_are_cut_into_each_images_own(alice, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    red, blue = (200, 0, 0), (0, 0, 200)
    batch = old_job(alice, [strip(red, blue), strip(red, blue)], size=2)
    single = old_job(alice, [strip(red)], size=1)
    uneven = old_job(alice, [strip(red, width=PREVIEW + 1)], size=2)  # 9 pixels for two
    migration("generation", "0005_job_reveals_output_trajectory").frames_to_outputs(apps, None)
    first, second = (output.trajectory for output in batch.outputs.all())
    assert [frame["step"] for frame in first] == [0, 1]
    assert all((pixels(f["image"]) == red).all() for f in first)
    assert all((pixels(f["image"]) == blue).all() for f in second)
    assert single.outputs.get().trajectory == [{"step": 0, "image": strip(red)}]
    assert [output.trajectory for output in uneven.outputs.all()] == [[], []]
    assert not Job.objects.exclude(trajectory=[]).exists()


@pytest.mark.django_db
def test_old_reproductions_lose_the_siblings_they_copied(
    alice, carol, settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.MEDIA_ROOT = tmp_path
    original = old_job(alice, [], size=2).outputs.get(index=1).gallery_image
    copied = old_job(carol, [], size=2)
    Reproduction.objects.create(job=copied, image=original, batch_index=1)
    sibling = copied.outputs.get(index=0)
    with django_capture_on_commit_callbacks(execute=True):
        migration("gallery", "0003_reproductions_reveal_one_image").reveal_one_image(apps, None)
    copied.refresh_from_db()
    assert copied.reveals == 1 and [o.index for o in copied.outputs.all()] == [1]
    assert [image.output.index for image in Image.objects.filter(owner=carol)] == [1]
    assert not (tmp_path / sibling.image.name).exists()
    assert original.output.job.outputs.count() == 2  # the original's batch is untouched


def test_an_owners_reproduction_of_their_own_image_keeps_its_copies(
    alice, settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.MEDIA_ROOT = tmp_path
    original = old_job(alice, [], size=2).outputs.get(index=1).gallery_image
    copied = old_job(alice, [], size=2)
    Reproduction.objects.create(job=copied, image=original, batch_index=1)
    with django_capture_on_commit_callbacks(execute=True):
        migration("gallery", "0003_reproductions_reveal_one_image").reveal_one_image(apps, None)
    copied.refresh_from_db()
    assert copied.reveals == 1 and copied.outputs.count() == 2
