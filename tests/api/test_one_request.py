"""One request on every door: the fields generation/job_request.py declares reach Studio's API,
the OpenAI and A1111 endpoints and the generate page, each in its dialect, and a refusal is
rendered in each door's shape. Without a live server."""

import json

import pytest
from django.test import Client

from generation import a1111_img2img, a1111_request, compat_openai, engine, job_request
from generation.job_request import Refused

pytestmark = pytest.mark.django_db


def test_the_api_schema_is_the_request_definition(client):
    schema = client.get("/api/v1/schema").json()["components"]["schemas"]["JobIn"]
    assert list(schema["properties"]) == list(job_request.NAMES)
    assert schema["required"] == ["prompt"]
    steps = schema["properties"]["steps"]
    assert (steps["minimum"], steps["maximum"]) == (1, 1000)
    assert schema["properties"]["seed"]["maximum"] == engine.SEED_MAX
    assert "native size" in schema["properties"]["width"]["description"]


def test_every_door_reads_every_field_by_its_own_name():
    # txt2img reads the hires fields (as hr_*), img2img the image ones: together, every field.
    a1111 = set(a1111_request.Txt2ImgIn.model_fields) | set(a1111_img2img.Img2ImgIn.model_fields)
    names = {**a1111_request.TXT2IMG_NAMES, **a1111_img2img.IMG2IMG_NAMES}
    assert {names.get(name, name) for name in job_request.NAMES} - a1111 == {
        "override_settings.sd_model_checkpoint"}  # the model: a key of override_settings
    openai = set(compat_openai.GenerateIn.model_fields)
    assert {compat_openai.PARAMS.get(name, name) for name in job_request.NAMES} <= openai
    edits = {*compat_openai.EditIn.model_fields, "image", "mask"}  # the files
    assert {compat_openai.EDIT_PARAMS.get(name, name) for name in job_request.NAMES} <= edits


def test_the_a1111_door_passes_the_shared_fields_through():
    request = a1111_request.studio_request(a1111_request.Txt2ImgIn(
        prompt="red circle", negative_prompt="blur", steps=7, width=48, height=40,
        subseed=5, subseed_strength=0.5, cfg_scale=2.5, seed=-1, batch_size=2, n_iter=3,
    ))
    assert (request.negative_prompt, request.steps, request.width, request.height) == (
        "blur", 7, 48, 40)
    assert (request.subseed, request.subseed_strength, request.guidance_scale) == (5, 0.5, 2.5)
    assert request.seed is None and request.batch_size == 6


def test_the_openai_door_takes_studios_fields_as_extensions():
    body = compat_openai.GenerateIn.model_validate({
        "prompt": "red circle", "n": 2, "size": "32x48", "seed": 9, "negative_prompt": "blur",
        "steps": 7, "sampler": "Euler a", "quality": "hd",
    })
    request = compat_openai.studio_request(body)
    assert (request.batch_size, request.width, request.height, request.seed) == (2, 32, 48, 9)
    assert (request.negative_prompt, request.steps, request.sampler) == ("blur", 7, "Euler a")


def test_a_refusal_says_its_kind_status_and_when_to_retry():
    invalid = Refused({"steps": "Enter a whole number."})
    assert (invalid.kind, invalid.status(422), invalid.headers) == (Refused.INVALID, 422, {})
    limit = Refused({"__all__": "Wait."}, retry_after=5)
    assert (limit.kind, limit.status(422), limit.headers) == (
        Refused.LIMIT, 429, {"Retry-After": "5"})


def test_each_door_names_a_bad_field_in_its_own_dialect(token, alice, tiny):
    api = Client(headers={"Authorization": f"Bearer {token(alice)}"})

    def post(path, **fields):
        body = json.dumps({"prompt": "red circle", **fields})
        return api.post(path, body, content_type="application/json")

    assert "guidance_scale" in post("/api/v1/jobs", guidance_scale=99).json()["errors"]
    assert "cfg_scale" in post("/sdapi/v1/txt2img", cfg_scale=99).json()["errors"]
    assert post("/v1/images/generations", n=9).json()["error"]["param"] == "n"
    assert post("/v1/images/generations", steps=0).json()["error"]["param"] == "steps"
