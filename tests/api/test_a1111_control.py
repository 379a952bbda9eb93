"""The rest of the A1111 surface image clients call: interrupt and skip (the caller's own job,
never another user's), the upscalers, and png-info, with the real `webuiapi` package against
a live server and a worker, and without one."""

import base64
import io
import json
import threading
import time
import zlib
from datetime import timedelta

import pytest
import webuiapi
from django.test import Client
from django.utils import timezone
from PIL import Image as PILImage
from PIL import PngImagePlugin

from generation import engine, recipes
from generation.models import Job


def webui(server, user, token) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port, username=user.username,
                             password=token(user), sampler="Euler a", steps=4)


def wait_until(condition, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# --- Live --------------------------------------------------------------------------------


def test_interrupt_stops_the_callers_own_job_and_never_another_users(
    studio_server, module_worker, alice, bob, token, tiny
):
    answers = []

    def long_txt2img():
        try:
            webui(studio_server, alice, token).txt2img(prompt="red circle", width=32,
                                                       height=32, steps=1000)
        except RuntimeError as refused:
            answers.append(refused.args[0])

    caller = threading.Thread(target=long_txt2img)
    caller.start()
    wait_until(lambda: Job.objects.filter(owner=alice, status=Job.Status.RUNNING,
                                          step__gt=0).exists())
    job = Job.objects.get(owner=alice)
    assert webui(studio_server, bob, token).interrupt() == {}
    assert webui(studio_server, bob, token).skip() is None
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING and not job.cancel_requested
    webui(studio_server, alice, token).interrupt()
    caller.join(timeout=60)
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELED and job.step < 1000
    assert answers == [409]  # the waiting call learns its job was stopped


def test_the_upscalers_and_png_info_through_webuiapi(studio_server, alice, token, tiny):
    api = webui(studio_server, alice, token)
    upscalers = api.get_upscalers()
    assert [u["name"] for u in upscalers] == list(engine.UPSCALERS)
    assert set(upscalers[0]) == {"name", "model_name", "model_path", "model_url", "scale"}
    assert [m["name"] for m in api.get_latent_upscale_modes()][0] == "Latent"
    png, recipe = studio_png()
    with PILImage.open(io.BytesIO(png)) as image:
        image.load()
        answer = api.png_info(image)  # webuiapi re-encodes it with its text chunks
    assert answer.info == engine.format_parameters(recipe)
    assert answer.parameters["Prompt"] == "red circle"
    assert (answer.parameters["Size-1"], answer.parameters["Size-2"]) == ("32", "32")
    assert answer.parameters["Seed"] == "11"


# --- interrupt and skip, without a server ----------------------------------------------------


@pytest.fixture
def api(token):
    def as_user(user) -> Client:
        return Client(headers={"Authorization": f"Bearer {token(user)}"})

    return as_user


def running(owner, **fields) -> Job:
    return Job.objects.create(owner=owner, recipe={}, status=Job.Status.RUNNING, step=1,
                              total_steps=10, started_at=timezone.now(), **fields)


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/sdapi/v1/interrupt", "/sdapi/v1/skip"])
def test_it_stops_only_the_callers_running_jobs(api, alice, bob, path):
    mine = running(alice)
    theirs = running(bob)
    queued = Job.objects.create(owner=alice, recipe={}, queued_at=timezone.now())
    finished = Job.objects.create(owner=alice, recipe={}, status=Job.Status.SUCCEEDED,
                                  finished_at=timezone.now() - timedelta(seconds=1))
    response = api(alice).post(path)
    assert response.status_code == 200
    assert response.json() == ({} if path.endswith("interrupt") else None)
    for job in (mine, theirs, queued, finished):
        job.refresh_from_db()
    assert mine.cancel_requested and not theirs.cancel_requested
    assert queued.status == Job.Status.QUEUED and finished.status == Job.Status.SUCCEEDED


@pytest.mark.django_db
def test_it_only_allows_post_and_a_known_caller(api, alice):
    assert api(alice).get("/sdapi/v1/interrupt").status_code == 405
    assert Client().post("/sdapi/v1/interrupt").status_code == 401


# --- png-info, without a server ---------------------------------------------------------------


def studio_png() -> tuple[bytes, engine.Recipe]:
    recipe = engine.Recipe.from_json(recipes.recipe_from_params(
        {"prompt": "red circle", "negative_prompt": "blur", "seed": 11, "steps": 4}))
    return engine.png_with_recipe(PILImage.new("RGB", (32, 32), "red"), recipe), recipe


def encoded(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_info(client: Client, image: str):
    return client.post("/sdapi/v1/png-info", json.dumps({"image": image}),
                       content_type="application/json")


@pytest.mark.django_db
def test_png_info_reads_the_parameters_as_a1111_does(api, alice, tiny):
    png, recipe = studio_png()
    answer = png_info(api(alice), "data:image/png;base64," + encoded(png)).json()
    assert answer["info"] == engine.format_parameters(recipe)
    assert answer["parameters"]["Negative prompt"] == "blur"
    assert answer["parameters"]["Steps"] == "4" and answer["parameters"]["Model"] == "tiny"
    assert json.loads(answer["items"]["studio_recipe"]) == recipe.to_json()


@pytest.mark.django_db
def test_an_image_without_parameters_has_empty_info(api, alice):
    buffer = io.BytesIO()
    PILImage.new("RGB", (8, 8)).save(buffer, format="JPEG")
    answer = png_info(api(alice), encoded(buffer.getvalue()))
    assert answer.status_code == 200
    assert answer.json()["info"] == "" and answer.json()["items"] == {}


def png_with(size=(8, 8), **texts) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        info.add_itxt(key, value, zip=True)
    buffer = io.BytesIO()
    PILImage.new("1", size).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def zTXt_bomb() -> bytes:
    """A PNG whose one text chunk inflates from kilobytes to 50 MB."""
    png = png_with()
    body = b"parameters\x00\x00" + zlib.compress(b"a" * 50 * 2**20, 9)
    chunk = len(body).to_bytes(4, "big") + b"zTXt" + body
    chunk += zlib.crc32(b"zTXt" + body).to_bytes(4, "big")
    header_end = 8 + 25  # the signature and IHDR
    return png[:header_end] + chunk + png[header_end:]


@pytest.mark.django_db
@pytest.mark.parametrize(("image", "says"), [
    ("not base64 at all!", "base64"),
    (encoded(b"GIF89a not an image"), "PNG, JPEG or WebP"),
    (encoded(png_with(size=(30000, 30000))), "pixels"),  # a decompression bomb's header
    (encoded(zTXt_bomb()), "readable"),
    (encoded(png_with(parameters="a" * (engine.MAX_PARAMETERS_CHARS + 1))), "characters"),
    (encoded(png_with(x="a" * engine.MAX_RECIPE_CHARS, y="b" * engine.MAX_PARAMETERS_CHARS,
                      z="c")),
     "characters"),
])
def test_hostile_images_are_refused_naming_the_field(api, alice, image, says):
    response = png_info(api(alice), image)
    assert response.status_code == 422, response.content
    assert says in response.json()["errors"]["image"]


@pytest.mark.django_db
def test_an_image_over_the_byte_cap_is_refused_before_decoding(api, alice, settings):
    settings.STUDIO_INPUT_MAX_BYTES = 1000
    response = png_info(api(alice), encoded(b"\x89PNG" + b"\x00" * 2000))
    assert response.status_code == 422 and "larger than" in response.json()["errors"]["image"]
