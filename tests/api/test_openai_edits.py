"""OpenAI's image edits (`POST /v1/images/edits`): the real `openai` package against a live
server and a real Celery worker, and the multipart reading, OpenAI's mask rule and the
refusals without one."""

import base64
import io

import numpy as np
import openai
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, RequestFactory
from PIL import Image as PILImage

from generation import compat_openai, engine
from generation.compat_openai import read_form
from generation.models import InputImage, Job


def client(server, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=api_key, max_retries=0)


def rgba(transparent: tuple[int, int, int, int] | None = None) -> PILImage.Image:
    """A 32×32 gradient, RGBA; `transparent` (a box) fully transparent, its colours kept."""
    x, y = np.meshgrid(np.arange(32), np.arange(32))
    pixels = np.stack([x * 8, y * 8, (x + y) * 4, np.full_like(x, 255)], axis=-1)
    if transparent:
        left, top, right, bottom = transparent
        pixels[top:bottom, left:right, 3] = 0
    return PILImage.fromarray(pixels.astype(np.uint8), "RGBA")


def png(image: PILImage.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


LEFT = (0, 0, 16, 32)
RIGHT = (16, 0, 32, 32)


def test_an_edit_repaints_where_the_mask_is_transparent(
    studio_server, module_worker, alice, token, tiny
):
    # The image's own transparent right half is ignored: the mask says the left.
    answer = client(studio_server, token(alice)).images.edit(
        image=("photo.png", png(rgba(transparent=RIGHT)), "image/png"),
        mask=("mask.png", png(rgba(transparent=LEFT)), "image/png"),
        prompt="red circle", size="32x32", response_format="b64_json",
        extra_body={"seed": 4, "steps": 4, "strength": 0.9},
    )
    assert answer.size == "32x32" and len(answer.data) == 1
    result = base64.b64decode(answer.data[0].b64_json)
    with PILImage.open(io.BytesIO(result)) as image:
        out = np.asarray(image.convert("RGB"), dtype=np.int16)
    original = np.asarray(rgba().convert("RGB"), dtype=np.int16)
    assert (out[:, 16:] == original[:, 16:]).all()  # outside the mask: the image's pixels
    assert np.abs(out[:, :16] - original[:, :16]).max() > 8
    recipe, _ = engine.read_png(result)
    assert recipe.mask is not None and recipe.strength == 0.9 and recipe.seed == 4
    job = Job.objects.get(owner=alice)
    assert job.inputs.filter(kind=InputImage.Kind.MASK).exists()


# --- Without a server ------------------------------------------------------------------------


def edit_request(files: dict[str, bytes | list[bytes]], **fields):
    """A multipart edit request as the openai package sends one, read and translated."""
    data = {"prompt": "red circle", **fields}
    for name, contents in files.items():
        many = contents if isinstance(contents, list) else [contents]
        data[name] = [SimpleUploadedFile(f"{name}.png", c, "image/png") for c in many]
    body, uploads = read_form(RequestFactory().post("/v1/images/edits", data))
    return compat_openai.edit_request(body, uploads)


def mask_of(request) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(request.mask.png)))


@pytest.mark.django_db
def test_without_a_mask_the_images_transparent_pixels_are_edited(settings):
    request = edit_request({"image": png(rgba(transparent=LEFT))})
    assert (mask_of(request)[:, :16] == 255).all() and (mask_of(request)[:, 16:] == 0).all()
    # The transparent area is drawn anew, as OpenAI does, not from the pixels under it.
    assert request.init_image.width == 32 and request.strength == 1.0
    assert edit_request({"image": png(rgba(transparent=LEFT))}, strength="0.6").strength == 0.6


@pytest.mark.django_db
def test_a_fully_opaque_image_without_a_mask_is_varied_as_a_whole():
    request = edit_request({"image": png(rgba())}, n="2", strength="0.3")
    assert request.mask is None and request.batch_size == 2 and request.strength == 0.3


@pytest.mark.django_db
def test_a_mask_overrides_the_images_alpha():
    request = edit_request({"image": png(rgba(transparent=RIGHT)),
                            "mask": png(rgba(transparent=LEFT))})
    assert (mask_of(request)[:, :16] == 255).all() and (mask_of(request)[:, 16:] == 0).all()


@pytest.fixture
def post(token, alice, tiny):
    api = Client(headers={"Authorization": f"Bearer {token(alice)}"})

    def send(files: dict[str, bytes | list[bytes]], **fields):
        data = {"prompt": "red circle", **fields}
        for name, contents in files.items():
            many = contents if isinstance(contents, list) else [contents]
            data[name] = [SimpleUploadedFile(f"{name}.png", c, "image/png") for c in many]
        return api.post("/v1/images/edits", data)

    return send


def refusal(response, status: int = 400) -> str:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert Job.objects.count() == 0 and InputImage.objects.count() == 0
    return error["param"]


@pytest.mark.django_db
@pytest.mark.parametrize(("files", "fields", "param"), [
    ({}, {}, "image"),
    ({"image": [png(rgba()), png(rgba())]}, {}, "image"),
    ({"image": b"not an image"}, {}, "image"),
    ({"image": png(rgba()), "mask": png(rgba())}, {}, "mask"),  # no transparent pixel
    ({"image": png(rgba()), "mask": png(rgba(LEFT).resize((16, 16)))}, {}, "mask"),
    ({"image": png(rgba())}, {"n": "20"}, "n"),
    ({"image": png(rgba())}, {"n": "two"}, "n"),
    ({"image": png(rgba())}, {"size": "33x32"}, "size"),
    ({"image": png(rgba())}, {"strength": "0.01", "steps": "4"}, "strength"),
    ({"image": png(rgba())}, {"response_format": "gif"}, "response_format"),
])
def test_a_bad_edit_is_400_naming_the_parameter(post, files, fields, param):
    assert refusal(post(files, **fields)) == param


@pytest.mark.django_db
def test_a_user_at_a_limit_is_refused_before_the_files_are_decoded(post, settings):
    settings.STUDIO_MAX_QUEUED_PER_USER = 0
    # Not an image at all: refused as one only if it were read; the limit answers first.
    response = post({"image": b"not an image"})
    assert refusal(response, 429) is None and response.headers["Retry-After"]


@pytest.mark.django_db
def test_a_json_body_is_refused_naming_the_image(token, alice):
    response = Client(headers={"Authorization": f"Bearer {token(alice)}"}).post(
        "/v1/images/edits", {"prompt": "red circle"}, content_type="application/json")
    assert refusal(response) == "image"


@pytest.mark.django_db
def test_files_over_the_cap_are_refused_before_they_are_read(post, settings, monkeypatch):
    settings.STUDIO_INPUT_MAX_BYTES = 2000
    monkeypatch.setattr(engine, "mask_from_alpha", lambda *a, **k: pytest.fail("read"))
    big = png(PILImage.effect_noise((64, 64), 50))
    assert len(big) > 2000
    assert refusal(post({"image": big}), 413) == "image"
    assert refusal(post({"image": png(rgba()), "mask": big}), 413) == "mask"
    # A body larger than two files and the form is refused from its Content-Length.
    noise = png(PILImage.effect_noise((800, 800), 100))
    assert len(noise) > compat_openai.FORM_BYTES // 2
    assert refusal(post({"image": [noise] * 3}), 413) == "image"


def test_edits_name_the_image_as_openai_does():
    refused = compat_openai.openai_error(
        compat_openai.Refused({"init_image": "The image is empty."}), compat_openai.EDIT_PARAMS)
    assert refused.param == "image" and refused.message.startswith("image: ")
