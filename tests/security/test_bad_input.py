"""Bad input to the JSON doors: Studio's API, the OpenAI and AUTOMATIC1111 endpoints, and the
generate page's form. Each case is refused with a 4xx (never a 500) whose answer names the
field at fault, and nothing is queued or stored for it.

Wrong JSON types, NaN and infinities, numbers of thousands of digits, NUL characters,
invalid UTF-8, text over STUDIO_MAX_TEXT_CHARS, bodies over DATA_UPLOAD_MAX_MEMORY_SIZE,
empty bodies and the wrong content type; input images that are not images, decompression
bombs, base64 over STUDIO_INPUT_MAX_BYTES and masks of another size. Each case is (id, body,
field): a dict is sent as JSON, bytes as they are; field None is a case about the whole
request, not one field.
"""

import base64
import functools
import json

import pytest
from django.conf import settings

from generation import waiting
from tests.png_files import bomb

from .conftest import counts, error_text, png_bytes

pytestmark = pytest.mark.django_db

LONG = "a" * 5000  # over STUDIO_MAX_TEXT_CHARS
DIGITS = "9" * 5000  # over Python's 4,300-digit limit on reading an int
NESTED = b"[" * 50_000 + b"]" * 50_000  # deeper than Python's JSON reader can recurse


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def oversized(field: str) -> bytes:
    """A well-formed JSON body just over the size limit."""
    size = settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1024
    return json.dumps({"prompt": "a red circle", field: "a" * size}).encode()


def raw(fields: str) -> bytes:
    """JSON text as written, for what json.dumps would not write (NaN, huge literals)."""
    return ("{" + fields + "}").encode()


@pytest.fixture(autouse=True)
def short_waits(monkeypatch):
    # An accepted request would wait half an hour for a worker: a case that slips through
    # answers 504 at once (and fails on its count of jobs) instead.
    monkeypatch.setattr(waiting, "wait_for_outputs",
                        functools.partial(waiting.wait_for_outputs, timeout=0.5))


def send(client, path: str, body, content_type="application/json"):
    data = json.dumps(body) if isinstance(body, dict | list) else body
    return client.post(path, data, content_type=content_type)


def check_refused(response, field: str | None, before: dict, *, api: bool = True) -> None:
    """A 4xx naming `field`, in the door's own JSON error shape for an API, and the same
    number of everything as `before`."""
    text = error_text(response)
    assert 400 <= response.status_code < 500, (response.status_code, text[:500])
    if api:
        assert response["Content-Type"].startswith("application/json"), text[:500]
    if field is not None:
        assert field.lower() in text.lower(), text[:500]
    assert counts() == before


def case(id_, body, field):
    return pytest.param(body, field, id=id_)


API_JOBS = [
    case("prompt-missing", {}, "prompt"),
    case("prompt-number", {"prompt": 5}, "prompt"),
    case("prompt-list", {"prompt": ["a red circle"]}, "prompt"),
    case("prompt-null", {"prompt": None}, "prompt"),
    case("prompt-too-long", {"prompt": LONG}, "prompt"),
    case("prompt-nul", {"prompt": "a red\x00 circle"}, "prompt"),
    case("negative-prompt-too-long", {"prompt": "a", "negative_prompt": LONG}, "negative_prompt"),
    case("steps-text", {"prompt": "a", "steps": "many"}, "steps"),
    case("steps-fraction", {"prompt": "a", "steps": 1.5}, "steps"),
    case("steps-huge", {"prompt": "a", "steps": 10**30}, "steps"),
    case("steps-negative", {"prompt": "a", "steps": -1}, "steps"),
    case("steps-5000-digits", raw(f'"prompt": "a", "steps": {DIGITS}'), "steps"),
    case("guidance-nan", raw('"prompt": "a", "guidance_scale": NaN'), "guidance_scale"),
    case("guidance-infinity", raw('"prompt": "a", "guidance_scale": Infinity'),
         "guidance_scale"),
    case("guidance-minus-infinity", raw('"prompt": "a", "guidance_scale": -Infinity'),
         "guidance_scale"),
    case("guidance-1e999", raw('"prompt": "a", "guidance_scale": 1e999'), "guidance_scale"),
    case("subseed-strength-nan", raw('"prompt": "a", "subseed_strength": NaN'),
         "subseed_strength"),
    case("seed-2-64", {"prompt": "a", "seed": 2**64}, "seed"),
    case("seed-negative", {"prompt": "a", "seed": -1}, "seed"),
    case("width-not-multiple-of-8", {"prompt": "a", "width": 33}, "width"),
    case("height-huge", {"prompt": "a", "height": 10**9}, "height"),
    case("batch-size-zero", {"prompt": "a", "batch_size": 0}, "batch_size"),
    case("batch-size-huge", {"prompt": "a", "batch_size": 10**6}, "batch_size"),
    case("model-unknown", {"prompt": "a", "model": "nope"}, "model"),
    case("model-number", {"prompt": "a", "model": 5}, "model"),
    case("model-too-long", {"prompt": "a", "model": LONG}, "model"),
    case("sampler-unknown", {"prompt": "a", "sampler": "nope"}, "sampler"),
    case("sampler-nul", {"prompt": "a", "sampler": "DD\x00IM"}, "sampler"),
    case("init-image-number", {"prompt": "a", "init_image": 5}, "init_image"),
    case("init-image-not-an-image", {"prompt": "a", "init_image": b64(b"GIF89a, or not")},
         "init_image"),
    case("init-image-bad-base64", {"prompt": "a", "init_image": "data:image/png;base64,%%"},
         "init_image"),
    case("init-image-bomb", {"prompt": "a", "init_image": b64(bomb())}, "init_image"),
    case("init-image-over-its-cap", {"prompt": "a", "init_image": "A" * (
        4 * settings.STUDIO_INPUT_MAX_BYTES // 3 + 64)}, "init_image"),
    case("mask-another-size", {"prompt": "a", "init_image": b64(png_bytes()),
                               "mask": b64(png_bytes(size=(16, 8)))}, "mask"),
    case("mask-without-image", {"prompt": "a", "mask": b64(png_bytes())}, "mask"),
    case("strength-two", {"prompt": "a", "init_image": b64(png_bytes()), "strength": 2},
         "strength"),
    case("strength-runs-no-step", {"prompt": "a", "init_image": b64(png_bytes()), "steps": 4,
                                   "strength": 0.2}, "strength"),
    case("strength-nan", raw(f'"prompt": "a", "init_image": "{b64(png_bytes())}", '
                             '"strength": NaN'), "strength"),
    case("paste-back-text", {"prompt": "a", "paste_back": "maybe"}, "paste_back"),
    case("hires-scale-huge", {"prompt": "a", "hires_scale": 100}, "hires_scale"),
    case("hires-upscaler-unknown", {"prompt": "a", "hires_scale": 1.5,
                                    "hires_upscaler": "ESRGAN_4x"}, "hires_upscaler"),
    case("invalid-json", b'{"prompt": ', None),
    case("json-array", b"[]", None),
    case("empty-body", b"", None),
    case("invalid-utf8", b'{"prompt": "\xff\xfe red circle"}', None),
    case("nested-50000-deep", b'{"prompt": ' + NESTED + b"}", None),
    case("oversized-body", oversized("negative_prompt"), None),
]


@pytest.mark.parametrize(("body", "field"), API_JOBS)
def test_the_api_refuses_a_bad_job_by_name(world, body, field):
    before = counts()
    response = send(world.api("alice"), "/api/v1/jobs", body)
    check_refused(response, field, before)


def test_the_api_refuses_a_form_encoded_body(world):
    before = counts()
    response = world.api("alice").post("/api/v1/jobs", {"prompt": "a red circle"})
    check_refused(response, None, before)


OPENAI = [
    case("prompt-missing", {"n": 1}, "prompt"),
    case("prompt-number", {"prompt": 5}, "prompt"),
    case("prompt-too-long", {"prompt": LONG}, "prompt"),
    case("prompt-nul", {"prompt": "a\x00"}, "prompt"),
    case("n-zero", {"prompt": "a", "n": 0}, "n"),
    case("n-huge", {"prompt": "a", "n": 10**6}, "n"),
    case("n-text", {"prompt": "a", "n": "two"}, "n"),
    case("n-fraction", {"prompt": "a", "n": 1.5}, "n"),
    case("n-5000-digits", raw(f'"prompt": "a", "n": {DIGITS}'), "n"),
    case("size-words", {"prompt": "a", "size": "big"}, "size"),
    case("size-huge", {"prompt": "a", "size": "99999x99999"}, "size"),
    case("size-zero", {"prompt": "a", "size": "0x0"}, "size"),
    case("size-5000-digits", {"prompt": "a", "size": DIGITS + "x64"}, "size"),
    case("size-number", {"prompt": "a", "size": 512}, "size"),
    case("response-format-unknown", {"prompt": "a", "response_format": "gif"},
         "response_format"),
    case("model-unknown", {"prompt": "a", "model": "dall-e-9"}, "model"),
    case("model-list", {"prompt": "a", "model": ["a"]}, "model"),
    case("seed-negative", {"prompt": "a", "seed": -1}, "seed"),
    case("seed-2-64", {"prompt": "a", "seed": 2**64}, "seed"),
    case("seed-nan", raw('"prompt": "a", "seed": NaN'), "seed"),
    case("user-too-long", {"prompt": "a", "user": LONG}, "user"),
    case("invalid-json", b"{", None),
    case("json-array", b"[1]", None),
    case("empty-body", b"", None),
    case("invalid-utf8", b'{"prompt": "\xc3\x28"}', None),
    case("nested-50000-deep", b'{"prompt": "a", "user": ' + NESTED + b"}", None),
    case("oversized-body", oversized("user"), None),
]


@pytest.mark.parametrize(("body", "field"), OPENAI)
def test_the_openai_endpoint_refuses_a_bad_request_by_name(world, body, field):
    before = counts()
    response = send(world.api("alice"), "/v1/images/generations", body)
    check_refused(response, field, before)


def a1111(**fields) -> dict:
    return {"prompt": "a red circle", **fields}


CHECKPOINT = "sd_model_checkpoint"
A1111 = [
    case("checkpoint-number", a1111(override_settings={CHECKPOINT: 5}), CHECKPOINT),
    case("checkpoint-list", a1111(override_settings={CHECKPOINT: ["a", "b"]}), CHECKPOINT),
    case("checkpoint-object", a1111(override_settings={CHECKPOINT: {"a": 1}}), CHECKPOINT),
    case("checkpoint-null", a1111(override_settings={CHECKPOINT: None}), CHECKPOINT),
    case("checkpoint-spaces", a1111(override_settings={CHECKPOINT: " " * 5000}), CHECKPOINT),
    case("checkpoint-unknown", a1111(override_settings={CHECKPOINT: "nope [abc123]"}),
         CHECKPOINT),
    case("checkpoint-nul", a1111(override_settings={CHECKPOINT: "studio-demo\x00"}),
         CHECKPOINT),
    case("override-settings-text", a1111(override_settings="tiny"), "override_settings"),
    case("override-settings-list", a1111(override_settings=[CHECKPOINT]), "override_settings"),
    case("override-clip-skip", a1111(override_settings={"CLIP_stop_at_last_layers": 2}),
         "CLIP_stop_at_last_layers"),
    case("scripts-number", a1111(alwayson_scripts={"x": 5}), "alwayson_scripts"),
    case("scripts-args-number", a1111(alwayson_scripts={"x": {"args": 5}}), "alwayson_scripts"),
    case("scripts-args-object", a1111(alwayson_scripts={"x": {"args": {"a": 1}}}),
         "alwayson_scripts"),
    case("scripts-args-text", a1111(alwayson_scripts={"x": {"args": "on"}}),
         "alwayson_scripts"),
    case("scripts-enabled", a1111(alwayson_scripts={"x": {"args": [True]}}),
         "alwayson_scripts"),
    case("scripts-list", a1111(alwayson_scripts=[1]), "alwayson_scripts"),
    case("scripts-text", a1111(alwayson_scripts="all"), "alwayson_scripts"),
    case("sampler-number", a1111(sampler_name=5), "sampler_name"),
    case("sampler-unknown", a1111(sampler_name="nope"), "sampler_name"),
    case("scheduler-unknown", a1111(scheduler="nope"), "scheduler"),
    case("scheduler-number", a1111(scheduler=5), "scheduler"),
    case("steps-text", a1111(steps="many"), "steps"),
    case("steps-negative", a1111(steps=-1), "steps"),
    case("steps-huge", a1111(steps=10**30), "steps"),
    case("cfg-nan", raw('"prompt": "a", "cfg_scale": NaN'), "cfg_scale"),
    case("cfg-infinity", raw('"prompt": "a", "cfg_scale": Infinity'), "cfg_scale"),
    case("width-odd", a1111(width=33), "width"),
    case("batch-size-zero", a1111(batch_size=0), "batch_size"),
    case("batch-size-huge", a1111(batch_size=100), "batch_size"),
    case("n-iter-zero", a1111(n_iter=0), "n_iter"),
    case("n-iter-huge", a1111(n_iter=10**9), "n_iter"),
    case("seed-2-64", a1111(seed=2**64), "seed"),
    case("seed-text", a1111(seed="lucky"), "seed"),
    case("subseed-strength-two", a1111(subseed_strength=2), "subseed_strength"),
    case("prompt-number", a1111(prompt=5), "prompt"),
    case("prompt-too-long", a1111(prompt=LONG), "prompt"),
    case("prompt-nul", a1111(prompt="a\x00"), "prompt"),
    case("hr-upscaler-unknown", a1111(enable_hr=True, hr_upscaler="ESRGAN_4x"), "hr_upscaler"),
    case("hr-scale-huge", a1111(enable_hr=True, hr_scale=100), "hr_scale"),
    case("eta-text", a1111(eta="x"), "eta"),
    case("styles", a1111(styles=["cinematic"]), "styles"),
    case("send-images-text", a1111(send_images="maybe"), "send_images"),
    case("invalid-json", b'{"prompt": "a",', None),
    case("json-array", b'["prompt"]', None),
    case("invalid-utf8", b'{"prompt": "\xff"}', None),
    case("nested-50000-deep", b'{"prompt": "a", "styles": ' + NESTED + b"}", None),
    case("oversized-body", oversized("negative_prompt"), None),
]


@pytest.mark.parametrize(("body", "field"), A1111)
def test_the_a1111_endpoint_refuses_a_bad_request_by_name(world, body, field):
    before = counts()
    response = send(world.api("alice"), "/sdapi/v1/txt2img", body)
    check_refused(response, field, before)


FILTERS = [
    case("seed-text", {"seed": "lucky"}, "seed"),
    case("seed-negative", {"seed": -1}, "seed"),
    case("seed-2-40", {"seed": 2**40}, "seed"),
    case("seed-superscript", {"seed": "²"}, "seed"),
    case("seed-5000-digits", {"seed": DIGITS}, "seed"),
    case("limit-zero", {"limit": 0}, "limit"),
    case("limit-huge", {"limit": 10**6}, "limit"),
    case("offset-negative", {"offset": -1}, "offset"),
    case("offset-huge", {"offset": 10**30}, "offset"),
    case("scope-unknown", {"scope": "everyone"}, "scope"),
    case("team-not-a-uuid", {"scope": "team", "team": "shapes"}, "team"),
    case("team-missing", {"scope": "team"}, "team"),
    case("sort-unknown", {"sort": "random"}, "sort"),
    case("q-nul", {"q": "red\x00"}, "q"),
    case("q-too-long", {"q": LONG}, "q"),
    case("model-nul", {"model": "\x00"}, "model"),
]


@pytest.mark.parametrize(("params", "field"), FILTERS)
def test_the_image_listing_refuses_a_bad_filter_by_name(world, params, field):
    before = counts()
    response = world.api("carol").get("/api/v1/images", params)
    check_refused(response, field, before)


@pytest.mark.parametrize(("params", "field"), [
    case("status-unknown", {"status": "lost"}, "status"),
    case("limit-text", {"limit": "all"}, "limit"),
])
def test_the_job_listing_refuses_a_bad_filter_by_name(world, params, field):
    response = world.api("alice").get("/api/v1/jobs", params)
    check_refused(response, field, counts())


@pytest.mark.parametrize(("body", "field"), [
    case("visibility-unknown", {"visibility": "everyone"}, "visibility"),
    case("visibility-number", {"visibility": 1}, "visibility"),
    case("team-not-a-uuid", {"visibility": "team", "team": "shapes"}, "team"),
    case("team-not-hers", {"visibility": "team", "team": "00000000-0000-4000-8000-000000000000"},
         "team"),
    case("invalid-json", b"{", None),
    case("oversized-body", oversized("team"), None),
])
def test_changing_an_images_visibility_refuses_bad_input_by_name(world, body, field):
    image = world.images["private"]
    data = json.dumps(body) if isinstance(body, dict) else body
    response = world.api("alice").patch(f"/api/v1/images/{image.pk}", data,
                                        content_type="application/json")
    check_refused(response, field, counts())
    image.refresh_from_db()
    assert image.visibility == "private"


FORM = [
    case("prompt-too-long", {"prompt": LONG}, "prompt"),
    case("prompt-nul", {"prompt": "a\x00"}, "prompt"),
    case("negative-prompt-too-long", {"prompt": "a", "negative_prompt": LONG},
         "negative_prompt"),
    case("steps-text", {"prompt": "a", "steps": "many"}, "steps"),
    case("steps-superscript", {"prompt": "a", "steps": "²"}, "steps"),
    case("steps-5000-digits", {"prompt": "a", "steps": DIGITS}, "steps"),
    case("steps-negative", {"prompt": "a", "steps": "-1"}, "steps"),
    case("guidance-nan", {"prompt": "a", "guidance_scale": "NaN"}, "guidance_scale"),
    case("guidance-infinity", {"prompt": "a", "guidance_scale": "inf"}, "guidance_scale"),
    case("guidance-1e309", {"prompt": "a", "guidance_scale": "1e309"}, "guidance_scale"),
    case("width-33", {"prompt": "a", "width": "33"}, "width"),
    case("height-5000-digits", {"prompt": "a", "height": DIGITS}, "height"),
    case("batch-size-zero", {"prompt": "a", "batch_size": "0"}, "batch_size"),
    case("seed-2-64", {"prompt": "a", "seed": str(2**64)}, "seed"),
    case("subseed-strength-two", {"prompt": "a", "subseed_strength": "2"}, "subseed_strength"),
    case("sampler-unknown", {"prompt": "a", "sampler": "nope"}, "sampler"),
    case("model-unknown", {"prompt": "a", "model": "nope"}, "model"),
    case("model-too-long", {"prompt": "a", "model": LONG}, "model"),
]


@pytest.mark.parametrize(("data", "field"), FORM)
def test_the_generate_form_refuses_a_bad_field_by_name(world, data, field):
    before = counts()
    response = world.client("alice").post("/jobs/", data)
    check_refused(response, field, before, api=False)


@pytest.mark.parametrize(("body", "field"), [
    case("steps-invalid-utf8", b"prompt=a&steps=%FF%FE", "steps"),
    case("oversized-body", b"prompt=" + b"a" * (2560 * 1024 + 1024), None),
])
def test_the_generate_form_refuses_a_bad_body(world, body, field):
    before = counts()
    response = world.client("alice").post("/jobs/", body,
                                          content_type="application/x-www-form-urlencoded")
    check_refused(response, field, before, api=False)
