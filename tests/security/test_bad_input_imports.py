"""Hostile uploads to the import page, and hostile recipes read from them.

An upload is refused with a 4xx naming what is wrong (the image, its parameters text, its
recipe) and nothing is stored: no row, no file. A Studio recipe read from a PNG never steers
the worker: reproducing it is refused by the field's name without queueing anything, or (for
`threads`, which the server decides) queues a job that runs with the server's own value.
"""

import io
import json
import os
import struct
import zlib

import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from django.urls import reverse
from PIL import Image as PILImage
from PIL import PngImagePlugin

from gallery.models import PngImport
from generation import engine, recipes
from generation.models import Job

from .conftest import counts
from .test_bad_input_forms import errors_shown

pytestmark = pytest.mark.django_db

IMAGE = ("image", "file")  # the form field, as the page and its messages call it
METADATA = ("parameters", "metadata")


def png(size=(8, 8), text: dict | None = None, itxt: dict | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    for key, value in (itxt or {}).items():
        info.add_itxt(key, value, zip=True)
    buffer = io.BytesIO()
    PILImage.new("RGB", size, (10, 20, 30)).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A small PNG whose header claims a huge image."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (min(width, 4096) + 1) * 16, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows)
            + chunk(b"IEND", b""))


def webp_with_comment(comment: str) -> bytes:
    """A1111 writes JPEG and WebP parameters as an EXIF UserComment; a WebP's EXIF chunk,
    unlike a JPEG's, may be megabytes long."""
    exif = PILImage.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + comment.encode("utf-16-be")
    buffer = io.BytesIO()
    PILImage.new("RGB", (8, 8)).save(buffer, "WEBP", exif=exif)
    return buffer.getvalue()


SETTINGS_LINE = "Steps: 20, Sampler: DDIM, CFG scale: 3, Seed: 1, Size: 8x8, Model: studio-demo"
# Half a megabyte of prompt in lines, then a proper settings line: huge, yet quick to read.
HUGE_PARAMETERS = "a red circle\n" * 40_000 + SETTINGS_LINE


def stored_files(world_media) -> int:
    folder = world_media / "imports"
    return len(list(folder.iterdir())) if folder.exists() else 0


def upload(client, data: bytes, name="picture.png", content_type="image/png"):
    return client.post(reverse("import_upload"),
                       {"image": SimpleUploadedFile(name, data, content_type)})


def check_refused(client, response, field, before, files_before, media) -> None:
    status, messages, page = errors_shown(client, response)
    told = " ".join(messages) or page
    assert 400 <= status < 500, (status, told[:500])
    names = field if isinstance(field, tuple) else (field,)
    assert any(name.lower() in told.lower() for name in names), told[:500]
    assert counts() == before
    assert stored_files(media) == files_before


def case(id_, data, field, name="picture.png", content_type="image/png", **settings):
    return pytest.param(data, field, name, content_type, settings, id=id_)


UPLOADS = [
    case("text-file", b"hello, world", IMAGE, "notes.txt", "text/plain"),
    case("text-named-png", b"hello, world", IMAGE),
    case("gif", b"GIF89a" + b"\0" * 64, IMAGE, "x.gif", "image/gif"),
    case("svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", IMAGE, "x.svg", "image/svg+xml"),
    case("truncated-png", png(size=(64, 64))[:70], IMAGE),
    case("empty-file", b"", IMAGE),
    case("bomb-100000-square", bomb_png(100_000, 100_000), IMAGE),
    case("bomb-5000-square", bomb_png(5000, 5000), IMAGE),
    case("huge-parameters", png(text={"parameters": HUGE_PARAMETERS}), "parameters"),
    case("huge-parameters-compressed", png(itxt={"parameters": HUGE_PARAMETERS}),
         "parameters"),
    case("parameters-with-nul", png(text={"parameters": "red\x00circle\n" + SETTINGS_LINE}),
         METADATA),
    case("parameters-cfg-nan", png(text={"parameters": "red circle\nSteps: 20, Sampler: DDIM, "
                                                       "CFG scale: nan, Seed: 1, Size: 8x8"}),
         METADATA + ("cfg",)),
    case("webp-huge-comment", webp_with_comment(HUGE_PARAMETERS[-100_000:]), "parameters",
         "x.webp", "image/webp"),
    case("over-the-size-limit", png(size=(64, 64)) + b"\0" * 4096, IMAGE,
         STUDIO_IMPORT_MAX_BYTES=1000),
    case("over-the-cap", png(), "import", STUDIO_MAX_IMPORTS_PER_USER=1),
]


@pytest.mark.parametrize(("data", "field", "name", "content_type", "overrides"), UPLOADS)
def test_a_hostile_upload_is_refused_by_name_and_nothing_is_kept(
    world, settings, data, field, name, content_type, overrides
):
    for key, value in overrides.items():
        setattr(settings, key, value)
    client = world.client("alice")
    media = settings.MEDIA_ROOT
    before, files_before = counts(), stored_files(media)
    response = upload(client, data, name, content_type)
    check_refused(client, response, field, before, files_before, media)


@pytest.mark.parametrize("body", [
    pytest.param({"data": "application/json"}, id="json-body"),
    pytest.param({"other": "field"}, id="no-file"),
])
def test_an_upload_without_a_file_is_refused_by_name(world, settings, body):
    client = world.client("alice")
    before, files_before = counts(), stored_files(settings.MEDIA_ROOT)
    if "data" in body:
        response = client.post(reverse("import_upload"), '{"image": "x"}',
                               content_type="application/json")
    else:
        response = client.post(reverse("import_upload"), body)
    check_refused(client, response, IMAGE, before, files_before, settings.MEDIA_ROOT)


def test_the_import_page_answers_after_an_import_without_a_recipe(world):
    page = world.client("alice").get(reverse("import_upload"))
    assert page.status_code == 200 and str(world.imported.pk) in page.content.decode()


# --- Hostile recipes ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_registered(world, tiny_model):
    """The tiny test model as "tiny", for the module: a recipe must name a model this server
    has, with its weights, before anything else about it is checked."""
    from django.conf import settings

    overrides = override_settings(STUDIO_MODELS={**settings.STUDIO_MODELS, "tiny": tiny_model})
    overrides.enable()
    yield "tiny"
    overrides.disable()


def genuine_recipe() -> dict:
    """A recipe as a worker records it: with its weights' hash, which the worker filled in."""
    made = recipes.recipe_from_params({"prompt": "red circle", "model": "tiny", "steps": 3,
                                       "seed": 5, "width": 32, "height": 32})
    return {**made, "model": {**made["model"],
                              "hash": engine.weights_hash(made["model"]["source"])}}


def with_config(**changes):
    def change(recipe: dict) -> dict:
        scheduler = recipe["scheduler"]
        return {**recipe, "scheduler": {**scheduler, "config": {**scheduler["config"],
                                                                **changes}}}
    return change


def nested(depth: int):
    """A value inside `depth` lists: harmless to read, a RecursionError for whatever walks
    it with a recursive function."""
    value = "x"
    for _ in range(depth):
        value = [value]
    return value


HOSTILE = {  # id: (how the recipe is changed, the field a refusal must name)
    "threads-2-40": (lambda r: {**r, "threads": 2**40}, "threads"),
    "timesteps-1e9": (with_config(num_train_timesteps=10**9), "num_train_timesteps"),
    "timesteps-1e6": (with_config(num_train_timesteps=10**6), "num_train_timesteps"),
    "timesteps-text": (with_config(num_train_timesteps="many"), "num_train_timesteps"),
    "unknown-config-key": (with_config(trained_betas_of_doom=[1.0] * 10),
                           "trained_betas_of_doom"),
    "config-not-an-object": (lambda r: {**r, "scheduler": {**r["scheduler"], "config": "x"}},
                             "config"),
    "class-unknown": (lambda r: {**r, "scheduler": {**r["scheduler"], "class": "os.system"}},
                      "class"),
    "steps-1e9": (lambda r: {**r, "steps": 10**9}, "steps"),
    "prompt-too-long": (lambda r: {**r, "prompt": "a" * 5000}, "prompt"),
}


def reproduce_is_refused_or_safe(client, imported: PngImport, field: str) -> None:
    """Reproducing is refused by name with nothing queued; `threads` may instead run with
    the server's own value."""
    before = counts()
    response = client.post(reverse("import_reproduce", args=[imported.pk]))
    status, messages, page = errors_shown(client, response)
    assert status < 500, page[:500]
    queued = Job.objects.filter(reproduction__imported=imported)
    if field == "threads" and queued.exists():
        threads = queued.get().recipe.get("threads")
        assert threads is None or 1 <= threads <= (os.cpu_count() or 1)
        return
    assert counts() == before
    assert any(field in message for message in messages), messages or page[:500]


# Refused as the file is read (Recipe.from_json): an import can no longer store them.
UNREADABLE = {
    "prompt-nested-900": (lambda r: {**r, "prompt": nested(900)}, "prompt"),
    "config-nested-900": (with_config(timestep_spacing=nested(900)), "timestep_spacing"),
}


@pytest.mark.parametrize("hostile", {**HOSTILE, **UNREADABLE})
def test_a_hostile_recipe_uploaded_in_a_png_never_reaches_the_queue(
    world, tiny_registered, hostile
):
    change, field = {**HOSTILE, **UNREADABLE}[hostile]
    data = png(size=(32, 32), itxt={"studio_recipe": json.dumps(change(genuine_recipe()))})
    client = world.client("alice")
    before = counts()
    response = upload(client, data)
    if response.status_code != 302:  # refused at the door: by name, nothing kept
        status, messages, page = errors_shown(client, response)
        assert 400 <= status < 500 and field in (" ".join(messages) or page)
        assert counts() == before
        return
    imported = PngImport.objects.get(pk=response["Location"].rstrip("/").rsplit("/", 1)[-1])
    if imported.recipe is None:  # read as no recipe at all: nothing of it can be queued
        before = counts()
        assert client.post(reverse("import_reproduce", args=[imported.pk])).status_code < 500
        assert counts() == before
        return
    reproduce_is_refused_or_safe(client, imported, field)


@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_hostile_recipe_already_stored_is_refused_when_reproduced(
    world, tiny_registered, hostile
):
    """An import kept before its checks existed (or by another door) is checked again."""
    change, field = HOSTILE[hostile]
    imported = PngImport(owner=world.users["alice"], format="PNG", width=32, height=32,
                         recipe=change(genuine_recipe()))
    imported.file.save("upload", ContentFile(png(size=(32, 32))), save=False)
    imported.save()
    reproduce_is_refused_or_safe(world.client("alice"), imported, field)
