"""Reproduce and verify, without a worker: what is queued, what is refused, how the verdict is
computed when the job succeeds (the live run is tests/e2e/test_gallery_reproduce.py)."""

import io

import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone
from PIL import Image as PILImage
from PIL import PngImagePlugin

from gallery.models import Reproduction, Visibility
from generation import engine, recipes, registry, services, worker_registry
from generation.models import BlockedPhrase, Job, WeightsHash

from .conftest import png_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def tiny_image(make_image, alice, team, tiny, tiny_model):
    """A team image whose recipe names the tiny model, as a real job would record it: with
    the weights' hash, which the worker filled in. The server has not kept that hash (no
    WeightsHash row) unless a test hashes the weights as a worker would."""
    image = make_image(alice, Visibility.TEAM, team=team)
    params = {"prompt": "red circle", "model": tiny, "steps": 3, "seed": 5, "width": 32,
              "height": 32, "batch_size": 2}
    made = recipes.recipe_from_params(params)
    recipe = {**made, "model": {**made["model"], "hash": engine.weights_hash(tiny_model)},
              "batch_index": 1, "threads": 1, "device": "cpu", "dtype": "float32"}
    image.output.recipe = recipe
    image.output.save()
    return image


def reproduce(client, image):
    return client.post(reverse("image_reproduce", args=[image.pk]), follow=True)


def test_it_queues_the_whole_batch_as_recorded(tiny_image, bob, as_viewer):
    reproduce(as_viewer("bob"), tiny_image)
    reproduction = Reproduction.objects.get()
    job = reproduction.job
    assert job.owner == bob and reproduction.image == tiny_image
    original = tiny_image.output.recipe
    # The server, not the recipe, decides the worker's threads, device and dtype.
    assert job.recipe == {**original, "batch_index": 0, "threads": None, "device": None,
                          "dtype": None}
    assert reproduction.batch_index == 1


def test_it_refuses_when_the_weights_changed(tiny_image, tiny_model, as_viewer):
    registry.weights_hash(tiny_model)  # as a worker does: the server knows its hash
    tiny_image.output.recipe["model"]["hash"] = "0" * 64
    tiny_image.output.save()
    page = reproduce(as_viewer("alice"), tiny_image).content.decode()
    assert "The weights of “tiny” have changed since this image was made" in page
    assert not Job.objects.exclude(pk=tiny_image.output.job_id).exists()


def test_before_the_server_knows_its_hash_the_worker_checks_the_weights(tiny_image,
                                                                         as_viewer):
    """No web request hashes: the job keeps the recipe's hash, and the engine, which the
    worker runs, refuses weights that differ from it."""
    tiny_image.output.recipe["model"]["hash"] = "0" * 64
    tiny_image.output.save()
    reproduce(as_viewer("alice"), tiny_image)
    job = Reproduction.objects.get().job
    assert job.recipe["model"]["hash"] == "0" * 64 and not WeightsHash.objects.exists()
    with pytest.raises(engine.WeightsMismatchError, match="cannot be reproduced"):
        engine.generate(engine.Recipe.from_json(job.recipe), preview=None)


def test_it_refuses_a_model_this_server_lacks(make_image, alice, as_viewer):
    image = make_image(alice)
    image.output.recipe["model"]["name"] = "gone"
    image.output.save()
    page = reproduce(as_viewer("alice"), image).content.decode()
    assert "This server has no model called “gone”" in page
    assert not Reproduction.objects.exists()


def test_it_refuses_a_model_no_worker_up_can_load(tiny_image, as_viewer):
    # A worker on another host, up, with other models (generation/worker_registry.py).
    worker_registry.report("gpu0@elsewhere.test", models=["sdxl"], holds=[], device="cuda")
    try:
        page = reproduce(as_viewer("alice"), tiny_image).content.decode()
    finally:
        worker_registry.withdraw("gpu0@elsewhere.test")
    assert "No worker that is up can load the model “tiny”" in page
    assert not Reproduction.objects.exists()


def test_it_refuses_a_blocked_prompt(tiny_image, as_viewer):
    BlockedPhrase.objects.create(phrase="circle")
    page = reproduce(as_viewer("alice"), tiny_image).content.decode()
    assert "which this server does not allow" in page and not Reproduction.objects.exists()


def test_it_refuses_a_compile_mode_this_servers_workers_do_not_run(tiny_image, as_viewer,
                                                                   settings):
    # Anyone can write one into a file to import: a worker would compile another copy.
    tiny_image.output.recipe["fast_path"] = {"compile": "max-autotune", "channels_last": False,
                                             "fused_qkv": False}
    tiny_image.output.save()
    page = reproduce(as_viewer("alice"), tiny_image).content.decode()
    assert "cannot be reproduced here" in page and not Reproduction.objects.exists()
    settings.STUDIO_COMPILE = "max-autotune"  # the server's own mode runs
    reproduce(as_viewer("alice"), tiny_image)
    assert Reproduction.objects.exists()


def test_it_never_runs_the_model_source_a_recipe_names(tiny_image, tiny_model, as_viewer):
    tiny_image.output.recipe["model"]["source"] = "/etc"
    tiny_image.output.save()
    reproduce(as_viewer("alice"), tiny_image)
    assert Reproduction.objects.get().job.recipe["model"]["source"] == tiny_model


def test_carol_cannot_reproduce_what_she_cannot_see(tiny_image, as_viewer):
    response = as_viewer("carol").post(reverse("image_reproduce", args=[tiny_image.pk]))
    assert response.status_code == 404


def finish(job: Job, png: bytes, index: int = 1) -> None:
    """Finish the job as the worker would: job_finish sends job_succeeded in its transaction."""
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, attempt=1,
                                         started_at=timezone.now())
    job.refresh_from_db()
    outputs = [{"index": i, "image": ContentFile(png, name=f"{i}.png"), "recipe": job.recipe,
                "width": 8, "height": 8} for i in range(index + 1)]
    assert services.job_finish(job=job, outputs=outputs, timings={}) is not None


def test_the_verdict_is_computed_when_the_job_succeeds(tiny_image, as_viewer):
    client = as_viewer("alice")
    reproduce(client, tiny_image)
    reproduction = Reproduction.objects.get()
    finish(reproduction.job, png_bytes())
    reproduction.refresh_from_db()
    assert reproduction.verdict == "identical"
    page = client.get(tiny_image.get_absolute_url()).content.decode()
    assert "<strong>identical</strong>" in page
    state = client.get(reverse("reproduction_state", args=[reproduction.pk])).json()
    assert state["verdict"] == "identical" and state["status"] == "succeeded"


def test_a_different_image_says_how_different(tiny_image, as_viewer):
    reproduce(as_viewer("alice"), tiny_image)
    reproduction = Reproduction.objects.get()
    finish(reproduction.job, png_bytes(color=(220, 40, 43)))
    reproduction.refresh_from_db()
    assert reproduction.result_text == "differs: largest pixel difference 3, PSNR 43.4 dB"


def test_within_one_level(tiny_image, as_viewer):
    reproduce(as_viewer("alice"), tiny_image)
    reproduction = Reproduction.objects.get()
    finish(reproduction.job, png_bytes(color=(221, 40, 40)))
    reproduction.refresh_from_db()
    assert reproduction.result_text == "within one level"


def test_a_failed_comparison_never_loses_the_jobs_images(tiny_image, as_viewer):
    reproduce(as_viewer("alice"), tiny_image)
    reproduction = Reproduction.objects.get()
    tiny_image.output.image.storage.delete(tiny_image.output.image.name)  # original gone
    finish(reproduction.job, png_bytes())
    reproduction.refresh_from_db()
    assert reproduction.verdict == "" and reproduction.job.outputs.count() == 2
    page = as_viewer("alice").get(tiny_image.get_absolute_url()).content.decode()
    assert "could not be compared" in page


@pytest.mark.parametrize("viewer,status", [("alice", 200), ("admin", 200), ("bob", 404),
                                           ("carol", 404)])
def test_a_reproductions_state_is_for_who_asked(tiny_image, as_viewer, viewer, status):
    reproduce(as_viewer("alice"), tiny_image)
    url = reverse("reproduction_state", args=[Reproduction.objects.get().pk])
    assert as_viewer(viewer).get(url).status_code == status


def import_a1111(client, prompt: str, model_hash: str, model: str) -> str:
    """Upload a PNG carrying only A1111 parameters; the import page's URL."""
    text = (f"{prompt}\nSteps: 3, Sampler: Euler a, CFG scale: 2, Seed: 9, Size: 32x32, "
            f"Model hash: {model_hash}, Model: {model}")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    buffer = io.BytesIO()
    PILImage.new("RGB", (32, 32)).save(buffer, "PNG", pnginfo=info)
    page = client.post(reverse("import_upload"),
                       {"image": SimpleUploadedFile("a.png", buffer.getvalue())})
    return page["Location"]


def test_an_a1111_import_of_a_known_model_reproduces(settings, tmp_path, tiny, as_viewer):
    settings.MEDIA_ROOT = tmp_path
    # The server knows its weights' hash: a worker or `manage.py models` hashed them.
    model_hash = registry.weights_hash(registry.models()[tiny])[:10]
    client = as_viewer("alice")
    client.post(import_a1111(client, "red circle", model_hash, tiny) + "reproduce/")
    job = Reproduction.objects.get().job
    assert (job.recipe["seed"], job.recipe["sampler"], job.recipe["steps"]) == (9, "Euler a", 3)
    assert job.recipe["guidance_scale"] == 2.0 and job.recipe["model"]["name"] == tiny


def test_an_a1111_import_waits_for_the_server_to_know_its_hash(settings, tmp_path, tiny,
                                                                tiny_model, as_viewer):
    settings.MEDIA_ROOT = tmp_path
    client = as_viewer("alice")
    page = import_a1111(client, "red circle", engine.weights_hash(tiny_model)[:10], tiny)
    answer = client.post(page + "reproduce/", follow=True).content.decode()
    assert "This server has not hashed the weights of “tiny” yet" in answer
    assert not Reproduction.objects.exists()


def test_an_a1111_import_made_with_loras_is_not_promised_the_same_pixels(
    settings, tmp_path, tiny, as_viewer
):
    settings.MEDIA_ROOT = tmp_path
    model_hash = registry.weights_hash(registry.models()[tiny])[:10]
    client = as_viewer("alice")
    page = import_a1111(client, "red circle <lora:ink:0.5>", model_hash, tiny)
    answer = client.post(page + "reproduce/", follow=True).content.decode()
    assert "This image was made with LoRAs" in answer
    assert not Reproduction.objects.exists()


def test_the_job_reveals_only_the_originals_place_in_its_batch(tiny_image, as_viewer):
    reproduce(as_viewer("alice"), tiny_image)
    job = Reproduction.objects.get().job
    assert job.reveals == 1 and job.shows(1) and not job.shows(0)


def test_it_refuses_a_recipe_whose_image_is_not_in_its_batch(tiny_image, as_viewer):
    tiny_image.output.recipe["batch_index"] = 2  # of a batch of 2
    tiny_image.output.save()
    page = reproduce(as_viewer("alice"), tiny_image).content.decode()
    assert "The recipe cannot run here" in page and "batch_index" in page
    assert not Reproduction.objects.exists()
