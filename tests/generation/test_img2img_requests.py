"""Image to image requests (generation/job_request.py, recipes.py): an input image and mask
sent as base64 or a data: URL become recipe refs by hash, are stored with the job once per
owner and image, and a bad one is refused by its field's name with nothing stored or queued."""

import base64
import hashlib
import io
import random

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image as PILImage

from generation import recipes
from generation.job_request import DEFAULT_STRENGTH, ImageData, Refused, parse
from generation.models import InputImage, Job
from studio.services import token_create
from tests.png_files import bomb

pytestmark = pytest.mark.django_db


def png(width=40, height=48, mode="RGB", color=(200, 30, 30), noise=False) -> bytes:
    if noise:
        noisy = random.Random(0).randbytes(width * height * len(mode))
        image = PILImage.frombytes(mode, (width, height), noisy)
    else:
        image = PILImage.new(mode, (width, height), color if mode == "RGB" else 255)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


@pytest.fixture
def api(alice, tiny, settings):
    settings.STUDIO_DEFAULT_MODEL = tiny
    return Client(headers={"Authorization": f"Bearer {token_create(user=alice, name='t')[1]}"})


def post(client, **fields):
    body = {"prompt": "red circle", "steps": 4, "seed": 42, **fields}
    return client.post("/api/v1/jobs", body, content_type="application/json")


def nothing_stored(media) -> bool:
    return (Job.objects.count() == 0 and InputImage.objects.count() == 0
            and not (media / "inputs").exists())


# --- Parsing ------------------------------------------------------------------------------


def test_base64_a_data_url_and_bytes_are_the_same_canonical_image():
    data = png()
    as_text = parse({"init_image": b64(data)}).init_image
    as_url = parse({"init_image": f"data:image/png;base64,{b64(data)}"}).init_image
    as_bytes = parse({"init_image": data}).init_image
    assert as_text == as_url == as_bytes
    assert isinstance(as_text, ImageData) and (as_text.width, as_text.height) == (40, 48)
    assert as_text.sha256 == hashlib.sha256(as_text.png).hexdigest()


def test_an_uploaded_file_is_capped_by_its_size_before_it_is_read(settings):
    data = png(noise=True)
    assert parse({"init_image": SimpleUploadedFile("x.png", data)}).init_image is not None
    settings.STUDIO_INPUT_MAX_BYTES = len(data) - 1
    with pytest.raises(Refused) as refused:
        parse({"init_image": SimpleUploadedFile("x.png", data)})
    assert f"is {len(data):,} bytes" in refused.value.errors["init_image"]


def test_an_image_is_not_held_to_the_text_cap(settings):
    settings.STUDIO_MAX_TEXT_CHARS = 100
    data = png(noise=True)
    assert len(b64(data)) > 100
    assert parse({"init_image": b64(data)}).init_image is not None


@pytest.mark.parametrize(("field", "raw", "words"), [
    ("init_image", b64(b"hello, not an image"), "is not a PNG"),
    ("init_image", "data:image/png;base64,%%%", "not valid base64"),
    ("init_image", b64(bomb()), "pixels"),
    ("init_image", 17, "Send an image"),
    ("mask", b64(b"GIF89a"), "The mask is not a PNG"),
    ("paste_back", "maybe", "true or false"),
])
def test_a_bad_input_is_refused_by_its_field(field, raw, words):
    with pytest.raises(Refused) as refused:
        parse({"prompt": "p", field: raw})
    assert list(refused.value.errors) == [field]
    assert words in refused.value.errors[field]


def test_the_byte_cap_comes_before_decoding(settings):
    settings.STUDIO_INPUT_MAX_BYTES = 1000
    # Not base64 at all: refused for its length, before anything tries to decode it.
    with pytest.raises(Refused) as refused:
        parse({"init_image": "!" * 5000})
    assert "larger than" in refused.value.errors["init_image"]
    with pytest.raises(Refused) as refused:
        parse({"init_image": png(noise=True)})
    assert "the most is 1,000" in refused.value.errors["init_image"]


def test_a_mask_of_another_size_is_refused_stating_the_rule():
    with pytest.raises(Refused) as refused:
        parse({"init_image": b64(png(40, 48)), "mask": b64(png(48, 40, mode="L"))})
    assert list(refused.value.errors) == ["mask"]
    assert "never resized" in refused.value.errors["mask"]


@pytest.mark.parametrize(("raw", "value"), [("false", False), ("on", True), (False, False)])
def test_paste_back_reads_form_text_and_json(raw, value):
    assert parse({"paste_back": raw}).paste_back is value


# --- Recipes ------------------------------------------------------------------------------


def test_an_input_image_becomes_a_ref_with_default_strength_and_its_size(tiny):
    request = parse({"prompt": "red circle", "model": tiny, "steps": 4,
                     "init_image": b64(png(43, 50))})
    recipe = recipes.recipe_for(request)
    assert recipe["init_image"] == {"sha256": request.init_image.sha256, "width": 43,
                                    "height": 50}
    assert recipe["strength"] == DEFAULT_STRENGTH
    assert (recipe["width"], recipe["height"]) == (40, 48)  # down to a multiple of 8
    assert recipe["mask"] is None and recipe["hires"] is None


def test_an_input_the_model_cannot_take_at_its_size_is_scaled_to_fit_keeping_its_shape(tiny):
    spec = recipes.model_spec(tiny)
    high = spec.limits.max_size
    recipe = recipes.recipe_from_params({"prompt": "red circle", "model": tiny,
                                         "init_image": b64(png(high * 4, high * 2))})
    assert (recipe["width"], recipe["height"]) == (high, high // 2)


def test_the_hires_fields_make_one_hires_object(tiny):
    recipe = recipes.recipe_from_params({
        "prompt": "red circle", "model": tiny, "steps": 4, "width": 32, "height": 32,
        "hires_scale": 1.5, "hires_steps": 3, "hires_strength": 0.6,
        "hires_upscaler": "Lanczos"})
    assert recipe["hires"] == {"scale": 1.5, "steps": 3, "strength": 0.6,
                               "upscaler": "Lanczos"}


@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"strength": 1.5}, "strength", "from 0 to 1"),
    ({"strength": 0.1}, "strength", "at least one"),  # int(4 steps × 0.1) = 0
    ({"hires_scale": 9, "init_image": None}, "hires_scale", "1 to 4"),
    ({"hires_scale": 2, "hires_upscaler": "Bicubic++", "init_image": None},
     "hires_upscaler", "unknown upscaler"),
    ({"init_image": None, "mask": b64(png(40, 48, mode="L"))}, "mask", "init_image"),
    ({"width": 36}, "width", ""),
])
def test_the_api_refuses_by_field_and_stores_nothing(api, media, fields, field, words):
    response = post(api, **{"init_image": b64(png()), **fields})
    assert response.status_code == 400, response.json()
    errors = response.json()["errors"]
    assert field in errors and words in errors[field]
    assert nothing_stored(media)


def test_bad_images_through_the_api_store_nothing(api, media):
    for fields in ({"init_image": b64(b"not an image")}, {"init_image": b64(bomb())},
                   {"init_image": b64(png(40, 48)), "mask": b64(png(32, 32, mode="L"))}):
        response = post(api, **fields)
        assert response.status_code == 400
        assert set(response.json()["errors"]) <= {"init_image", "mask"}
    assert nothing_stored(media)


def test_a_body_over_the_limit_is_refused_whole(api, media, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    response = post(api, init_image=b64(png(200, 200, noise=True)))
    assert response.status_code == 413
    assert nothing_stored(media)


# --- Storing ------------------------------------------------------------------------------


def test_an_image_sent_again_is_stored_once_and_kept_with_each_job(api, alice, media):
    image, mask = b64(png()), b64(png(mode="L"))
    first = post(api, init_image=image, mask=mask, strength=0.5)
    second = post(api, init_image=f"data:image/png;base64,{image}", strength=0.5)
    assert first.status_code == second.status_code == 201
    stored = InputImage.objects.get(kind="image")
    assert InputImage.objects.count() == 2 and stored.owner == alice
    assert stored.file.name == f"inputs/{alice.pk}/{stored.sha256}.png"
    jobs = [Job.objects.get(pk=r.json()["id"]) for r in (first, second)]
    assert [set(job.inputs.values_list("kind", flat=True)) for job in jobs] == [
        {"image", "mask"}, {"image"}]
    assert jobs[0].recipe["init_image"]["sha256"] == stored.sha256
    assert jobs[0].recipe["mask"]["sha256"] == InputImage.objects.get(kind="mask").sha256
    assert jobs[0].total_steps == 2  # the steps it runs: int(4 × 0.5)
    with stored.file.open("rb") as file:
        assert hashlib.sha256(file.read()).hexdigest() == stored.sha256


def test_a_submit_over_a_limit_stores_no_input(api, media, settings):
    settings.STUDIO_MAX_QUEUED_PER_USER = 0
    response = post(api, init_image=b64(png()))
    assert response.status_code == 429
    assert nothing_stored(media)


def truncated(data: bytes) -> bytes:
    """The PNG with its pixel data cut short: the header reads, the pixels do not."""
    return data[: len(data) // 2]


def test_parsing_reads_the_header_alone_and_the_pixels_are_refused_at_submit(api, media):
    broken = truncated(png(40, 48, noise=True))
    request = parse({"prompt": "p", "init_image": b64(broken)})  # the header is fine
    assert (request.init_image.width, request.init_image.height) == (40, 48)
    response = post(api, init_image=b64(broken))
    assert response.status_code == 400
    assert "not a readable image" in response.json()["errors"]["init_image"]
    assert nothing_stored(media)


def test_a_user_at_a_limit_is_refused_before_the_image_is_decoded(api, media, settings):
    # A broken image would be refused by its field once decoded: the limit answers first.
    settings.STUDIO_MAX_QUEUED_PER_USER = 0
    response = post(api, init_image=b64(truncated(png(40, 48, noise=True))))
    assert response.status_code == 429 and "__all__" in response.json()["errors"]
    assert nothing_stored(media)


def test_a_turned_photos_size_is_read_as_it_will_be_shown():
    photo = PILImage.new("RGB", (40, 24), (200, 30, 30))
    exif = photo.getexif()
    exif[0x0112] = 6  # stored on its side: shown turned a quarter
    out = io.BytesIO()
    photo.save(out, "JPEG", exif=exif)
    image = parse({"prompt": "p", "init_image": b64(out.getvalue())}).init_image
    assert (image.width, image.height) == (24, 40)
    assert PILImage.open(io.BytesIO(image.png)).size == (24, 40)


def test_the_schema_takes_the_image_fields(api):
    schema = api.get("/api/v1/schema").json()["components"]["schemas"]["JobIn"]["properties"]
    assert {"init_image", "mask", "strength", "mask_blur", "paste_back", "hires_scale",
            "hires_steps", "hires_strength", "hires_upscaler"} <= set(schema)
    assert "bytes once decoded" in schema["init_image"]["description"]
