"""Image to image jobs: the worker runs them from the inputs stored with them, read through
the storage; a job whose input is gone fails saying so; reproducing one (the gallery's
Reproduce and `manage.py reproduce`) finds its inputs by the recipe's hashes, and says
clearly when one is gone."""

import base64
import io
import json
import random
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction
from django.test import Client
from django.urls import reverse
from PIL import Image as PILImage

from gallery.imports import import_recipe
from gallery.models import Image, PngImport, Reproduction, Visibility
from gallery.reproduce import ReproduceRefused, reproduction_start
from generation import engine, inputs, recipes, registry, runner
from generation.job_request import parse
from generation.models import InputImage, Job
from studio.services import token_create
from tests.conftest import Worker, job_finished
from tests.gallery.conftest import make_image  # noqa: F401 (a fixture)

STEPS = 4


def png(mode="RGB", size=(32, 32), seed=0) -> bytes:
    if mode == "L":  # a mask: the right half repainted
        image = PILImage.new("L", size, 0)
        image.paste(255, (size[0] // 2, 0, *size))
    else:
        noisy = random.Random(seed).randbytes(size[0] * size[1] * 3)
        image = PILImage.frombytes("RGB", size, noisy)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def submit(user, tiny, **fields) -> Job:
    params = {"prompt": "red circle", "model": tiny, "steps": STEPS, "seed": 9,
              "init_image": b64(png()), **fields}
    return recipes.submit(user=user, request=parse(params))


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


# --- Without a worker ---------------------------------------------------------------------


@pytest.mark.django_db
def test_the_worker_reads_a_jobs_inputs_through_the_storage(alice, tiny, media):
    job = submit(alice, tiny, mask=b64(png("L")))
    files = inputs.files_for(job)
    assert set(files) == {job.recipe["init_image"]["sha256"], job.recipe["mask"]["sha256"]}
    mask = job.inputs.get(kind="mask")
    mask.file.storage.delete(mask.file.name)
    assert set(inputs.files_for(job)) == {job.recipe["init_image"]["sha256"]}
    # What the engine then raises, as the job's owner reads it.
    reason = runner.failure_reason(engine.InputMissingError(mask.sha256, "mask"))
    assert reason.startswith("The job cannot run: the mask") and "not available" in reason


@pytest.fixture
def made_from_input(make_image, alice, team, tiny, media):  # noqa: F811
    """alice's team image, made by a job from an input image and mask, as a worker stores
    it (the recipe with the weights' hash the worker filled in)."""
    job = submit(alice, tiny, mask=b64(png("L")), strength=0.5)
    image = make_image(alice, Visibility.TEAM, team=team)
    recipe = {**job.recipe, "model": {**job.recipe["model"],
                                      "hash": engine.weights_hash(job.recipe["model"]["source"])}}
    output = image.output
    output.job, output.recipe = job, recipe
    output.save()
    return image


@pytest.mark.django_db
def test_a_reproduction_stores_the_inputs_for_who_reproduces(made_from_input, bob):
    reproduction = reproduction_start(user=bob, image=made_from_input)
    job = reproduction.job
    assert job.owner == bob and job.recipe["init_image"] == made_from_input.output.recipe[
        "init_image"]
    copies = {image.sha256: image for image in job.inputs.all()}
    originals = {image.sha256: image for image in made_from_input.output.job.inputs.all()}
    assert copies.keys() == originals.keys() and len(copies) == 2
    assert all(image.owner == bob for image in copies.values())
    assert inputs.files_for(job) == inputs.files_for(made_from_input.output.job)


@pytest.mark.django_db
def test_a_reproduction_whose_input_is_gone_is_refused_saying_so(made_from_input, bob):
    made_from_input.output.job.inputs.filter(kind="image").delete()
    with pytest.raises(ReproduceRefused, match="The input image this image was made from .* "
                                              "is no longer stored on this server"):
        reproduction_start(user=bob, image=made_from_input)
    assert not Reproduction.objects.exists()


@pytest.mark.django_db
def test_an_imported_recipe_opens_only_inputs_its_importer_may_see(made_from_input, carol,
                                                                   bob):
    def imported(owner):
        return PngImport.objects.create(owner=owner, format="PNG", width=32, height=32,
                                        recipe=made_from_input.output.recipe)

    with pytest.raises(ReproduceRefused, match="no longer stored"):
        reproduction_start(user=carol, imported=imported(carol))  # a hash opens nothing
    # bob may see the team image the inputs made, so he may use them.
    assert reproduction_start(user=bob, imported=imported(bob)).job.inputs.count() == 2


@pytest.mark.django_db
def test_reproduce_says_when_an_input_is_gone(made_from_input, tmp_path):
    recipe = engine.Recipe.from_json(made_from_input.output.recipe)
    file = tmp_path / "x.png"
    file.write_bytes(engine.png_with_recipe(PILImage.new("RGB", (32, 32)), recipe))
    InputImage.objects.filter(kind="mask").delete()
    with pytest.raises(CommandError, match="The mask this image was made from .* is no "
                                           "longer stored on this server"):
        run("reproduce", str(file), "--out", str(tmp_path / "out"))


# --- A real worker ------------------------------------------------------------------------


def test_img2img_and_inpainting_jobs_run_and_reproduce_identically(
    transactional_db, alice, tiny, media, tmp_path, settings
):
    """Through the REST API, on a real worker that reads the inputs from the same media
    folder: each job runs the steps its strength leaves, its result reproduces identically,
    and once its input is gone, reproduce says so and a job that needs it fails saying so."""
    settings.STUDIO_DEFAULT_MODEL = tiny
    api = Client(headers={"Authorization": f"Bearer {token_create(user=alice, name='t')[1]}"})
    worker = Worker(env={"MEDIA_ROOT": str(media)})
    worker.start()
    try:
        bodies = [{"init_image": b64(png()), "strength": 0.5},
                  {"init_image": f"data:image/png;base64,{b64(png())}", "strength": 0.75,
                   "mask": b64(png("L")), "mask_blur": 2}]
        jobs = []
        for body in bodies:
            response = api.post("/api/v1/jobs", {"prompt": "red circle", "steps": STEPS,
                                                 "seed": 9, **body},
                                content_type="application/json")
            assert response.status_code == 201, response.json()
            jobs.append(Job.objects.get(pk=response.json()["id"]))
        jobs = [job_finished(job) for job in jobs]
        assert [job.status for job in jobs] == ["succeeded"] * 2, [job.error for job in jobs]
        assert [(job.step, job.total_steps) for job in jobs] == [(2, 2), (3, 3)]
        for job in jobs:
            output = job.outputs.get()
            assert (output.width, output.height) == (32, 32)
            state = api.get(f"/api/v1/jobs/{job.pk}").json()["images"][0]
            assert api.get(state["init_image_url"]).status_code == 200
            file = tmp_path / f"{job.pk}.png"
            with output.image.open("rb") as stored:
                file.write_bytes(stored.read())
            report = run("reproduce", str(file), "--out", str(tmp_path / "again"), "--json")
            assert json.loads(report.strip().splitlines()[-1])["verdict"] == "identical"
        assert Image.objects.filter(output__job__in=jobs).count() == 2

        # The input's file goes before the job that needs it reaches the worker.
        with transaction.atomic():
            job = submit(alice, tiny, init_image=b64(png(seed=1)), strength=0.5)
            stored = job.inputs.get()
            stored.file.storage.delete(stored.file.name)
        job = job_finished(job)
        assert job.status == "failed"
        assert job.error.startswith("The job cannot run: the init image")
        assert reverse("image_input", args=[jobs[0].outputs.get().pk]).endswith("input.png")
    finally:
        worker.stop()


@pytest.mark.django_db
def test_generate_starts_from_an_image_file_and_checks_it(settings, tiny, tmp_path):
    settings.STUDIO_DEFAULT_MODEL, settings.STUDIO_THREADS = tiny, 1
    (tmp_path / "in.png").write_bytes(png(size=(40, 32)))
    (tmp_path / "mask.png").write_bytes(png("L", size=(32, 32)))
    report = run("generate", "--prompt", "red circle", "--steps", "4", "--init-image",
                 str(tmp_path / "in.png"), "--strength", "0.5", "--out", str(tmp_path / "out"),
                 "--json")
    [made] = json.loads(report.strip().splitlines()[-1])["images"]
    assert made["recipe"]["strength"] == 0.5
    assert (made["recipe"]["width"], made["recipe"]["height"]) == (40, 32)
    with pytest.raises(CommandError, match="--mask: The mask is 32x32 but the image is 40x32"):
        run("generate", "--prompt", "red circle", "--init-image", str(tmp_path / "in.png"),
            "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "out"))
    with pytest.raises(CommandError, match="--strength:"):
        run("generate", "--prompt", "red circle", "--init-image", str(tmp_path / "in.png"),
            "--strength", "0.01", "--out", str(tmp_path / "out"))


def a1111_import(owner, tiny, settings_line: str) -> PngImport:
    text = (f"red circle\nSteps: 4, Sampler: Euler a, CFG scale: 2, Seed: 9, Size: 32x32, "
            f"Model hash: {registry.weights_hash(registry.models()[tiny])[:10]}, "
            f"Model: {tiny}, {settings_line}")
    return PngImport.objects.create(owner=owner, format="PNG", width=32, height=32,
                                    parameters=text, fields=engine.parse_parameters(text))


@pytest.mark.django_db
def test_an_a1111_hires_image_reproduces_with_its_hires_fix(alice, tiny):
    imported = a1111_import(alice, tiny, "Denoising strength: 0.6, Hires upscale: 1.5, "
                            "Hires steps: 2, Hires upscaler: Latent (bicubic)")
    assert import_recipe(imported)["hires"] == {"scale": 1.5, "steps": 2, "strength": 0.6,
                                                "upscaler": "Latent (bicubic)"}
    job = reproduction_start(user=alice, imported=imported).job
    assert job.recipe["hires"] == import_recipe(imported)["hires"]
    assert job.total_steps == 4 + int(2 * 0.6)


@pytest.mark.django_db
def test_an_a1111_img2img_image_is_refused_for_want_of_its_input(alice, tiny):
    imported = a1111_import(alice, tiny, "Denoising strength: 0.6, Mask blur: 4")
    with pytest.raises(ReproduceRefused, match="made from an input image"):
        reproduction_start(user=alice, imported=imported)
