"""Hostile input at the three JSON APIs (Studio's /api/v1/, OpenAI's /v1/, A1111's /sdapi/v1/)
and the generate form: every bad field is a 4xx in the door's own error shape naming the field,
never a 500; nothing is queued for it; a body over the size limit is a 413; and none of it is
parsed on the event loop."""

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from generation import a1111_request, compat_a1111, compat_openai
from generation.models import BlockedPhrase, Job

pytestmark = pytest.mark.django_db

A1111 = "/sdapi/v1/txt2img"
OPENAI = "/v1/images/generations"
JOBS = "/api/v1/jobs"
LONG = "x" * (settings.STUDIO_MAX_TEXT_CHARS + 1)
HUGE = "1" + "0" * 5000  # beyond Python's 4,300-digit limit on int(str)
BIG = 10**40  # a valid JSON int, far past every range


@pytest.fixture
def api(token):
    def as_user(user) -> Client:
        return Client(headers={"Authorization": f"Bearer {token(user)}"})

    return as_user


def body(**fields) -> str:
    """A request with a short prompt and `fields`; the strings "NaN", "Infinity", "-Infinity",
    "1e400" and HUGE stand for those bare JSON numbers."""
    text = json.dumps({"prompt": "red circle", **fields})
    for number in ("NaN", "-Infinity", "Infinity", "1e400", HUGE):
        text = text.replace(json.dumps(number), number)
    return text


def send(client: Client, path: str, payload: str):
    return client.post(path, payload, content_type="application/json")


# --- AUTOMATIC1111: 422, {"detail", "errors": {field: message}} -----------------------------

A1111_CASES = {
    # One error a key would make the refusal as large as the request.
    "50,000 override_settings": (body(override_settings={f"k{i}": 1 for i in range(50_000)}),
                                 "override_settings"),
    "50,000 alwayson_scripts": (body(alwayson_scripts={f"s{i}": {"args": [True]}
                                                        for i in range(50_000)}),
                                "alwayson_scripts"),
    "override_settings a list": (body(override_settings=[]), "override_settings"),
    "override_settings a string": (body(override_settings="tiny"), "override_settings"),
    "checkpoint a number": (body(override_settings={"sd_model_checkpoint": 5}),
                            "override_settings.sd_model_checkpoint"),
    "checkpoint a list": (body(override_settings={"sd_model_checkpoint": ["tiny"]}),
                          "override_settings.sd_model_checkpoint"),
    "checkpoint a dict": (body(override_settings={"sd_model_checkpoint": {}}),
                          "override_settings.sd_model_checkpoint"),
    "checkpoint null": (body(override_settings={"sd_model_checkpoint": None}),
                        "override_settings.sd_model_checkpoint"),
    "checkpoint true": (body(override_settings={"sd_model_checkpoint": True}),
                        "override_settings.sd_model_checkpoint"),
    "checkpoint of 36,000 spaces": (
        body(override_settings={"sd_model_checkpoint": " " * 36_000 + "x"}),
        "override_settings.sd_model_checkpoint"),
    "checkpoint unknown": (body(override_settings={"sd_model_checkpoint": "nope [abc]"}),
                           "override_settings.sd_model_checkpoint"),
    "a setting a list": (body(override_settings={"sd_vae": ["x"]}), "override_settings.sd_vae"),
    "scripts a list": (body(alwayson_scripts=[]), "alwayson_scripts"),
    "scripts a string": (body(alwayson_scripts="ADetailer"), "alwayson_scripts"),
    "script a string": (body(alwayson_scripts={"x": "on"}), "alwayson_scripts.x"),
    "script a number": (body(alwayson_scripts={"x": 5}), "alwayson_scripts.x"),
    "script args a number": (body(alwayson_scripts={"x": {"args": 5}}), "alwayson_scripts.x"),
    "script args a string": (body(alwayson_scripts={"x": {"args": "on"}}),
                             "alwayson_scripts.x"),
    "script args a dict": (body(alwayson_scripts={"x": {"args": {"a": 1}}}),
                           "alwayson_scripts.x"),
    "script on, bare list": (body(alwayson_scripts={"x": [True]}), "alwayson_scripts.x"),
    "script on": (body(alwayson_scripts={"x": {"args": [1, {}]}}), "alwayson_scripts.x"),
    "styles a string": (body(styles="anime"), "styles"),
    "styles a dict": (body(styles={"a": 1}), "styles"),
    "styles named": (body(styles=["anime"]), "styles"),
    "eta 5": (body(eta=5), "eta"),
    "prompt a number": (json.dumps({"prompt": 5}), "prompt"),
    "prompt null": (json.dumps({"prompt": None}), "prompt"),
    "prompt too long": (json.dumps({"prompt": LONG}), "prompt"),
    "prompt with NUL": (json.dumps({"prompt": "red\x00"}), "prompt"),
    "negative a list": (body(negative_prompt=[]), "negative_prompt"),
    "negative too long": (body(negative_prompt=LONG), "negative_prompt"),
    "sampler a number": (body(sampler_name=5), "sampler_name"),
    "sampler too long": (body(sampler_name=LONG), "sampler_name"),
    "sampler_index a dict": (body(sampler_index={}), "sampler_index"),
    "scheduler a dict": (body(scheduler={}), "scheduler"),
    "scheduler too long": (body(scheduler=LONG), "scheduler"),
    "seed a word": (body(seed="abc"), "seed"),
    "seed 1e400": (body(seed="1e400"), "seed"),
    "seed of 5,001 digits": (body(seed=HUGE), "seed"),
    "seed past the range": (body(seed=BIG), "seed"),
    "steps NaN": (body(steps="NaN"), "steps"),
    "steps a list": (body(steps=[20]), "steps"),
    "cfg_scale NaN": (body(cfg_scale="NaN"), "cfg_scale"),
    "cfg_scale Infinity": (body(cfg_scale="Infinity"), "cfg_scale"),
    "cfg_scale -Infinity": (body(cfg_scale="-Infinity"), "cfg_scale"),
    "width of 5,001 digits": (body(width=HUGE), "width"),
    "height a dict": (body(height={}), "height"),
    "batch past the range": (body(batch_size=BIG, n_iter=BIG), "batch_size"),
    "n_iter 0": (body(n_iter=0), "n_iter"),
    "n_iter a word": (body(n_iter="x"), "n_iter"),
    "subseed_strength NaN": (body(subseed_strength="NaN"), "subseed_strength"),
    "send_images a word": (body(send_images="maybe"), "send_images"),
    "body a list": ("[]", "body"),
    "body a string": ('"red circle"', "body"),
    "body null": ("null", "body"),
    "body not JSON": ("{", "body"),
    "body nested 100,000 deep": ("[" * 100_000, "body"),
}


@pytest.mark.parametrize(("payload", "field"), A1111_CASES.values(), ids=A1111_CASES.keys())
def test_a1111_refuses_each_bad_field_by_name_and_queues_nothing(api, alice, tiny, payload, field):
    response = send(api(alice), A1111, payload)
    assert response.status_code == 422, response.content[:300]
    answer = response.json()
    assert field in answer["errors"], answer
    assert field in answer["detail"]
    assert Job.objects.count() == 0


def test_a1111_quotes_back_a_hostile_name_shortened(api, alice, tiny):
    name = "x" * 100_000
    response = send(api(alice), A1111, body(alwayson_scripts={name: {"args": [True]}},
                                            override_settings={name: 1}))
    assert response.status_code == 422
    assert len(response.content) < 1000
    assert Job.objects.count() == 0


def test_a1111_strips_a_hostile_title_in_linear_time(api, alice, tiny):
    started = time.perf_counter()
    response = send(api(alice), A1111,
                    body(override_settings={"sd_model_checkpoint": " " * 50_000 + "x"}))
    assert time.perf_counter() - started < 1
    assert response.status_code == 422


# --- OpenAI: 400, {"error": {"message", "type", "param", "code"}} ---------------------------

OPENAI_CASES = {
    "prompt missing": (json.dumps({}), "prompt"),
    "prompt a number": (json.dumps({"prompt": 5}), "prompt"),
    "prompt too long": (json.dumps({"prompt": LONG}), "prompt"),
    "n a word": (body(n="two"), "n"),
    "n a list": (body(n=[2]), "n"),
    "n a fraction": (body(n=1.5), "n"),
    "n NaN": (body(n="NaN"), "n"),
    "n of 5,001 digits": (body(n=HUGE), "n"),
    "n past the range": (body(n=BIG), "n"),
    "size a number": (body(size=512), "size"),
    "size a list": (body(size=[512, 512]), "size"),
    "size too long": (body(size=LONG), "size"),
    "size not WxH": (body(size="1" * 1000 + "x"), "size"),
    "size too big": (body(size="99999x99999"), "size"),
    "response_format a number": (body(response_format=5), "response_format"),
    "response_format unknown": (body(response_format="gif"), "response_format"),
    "model a number": (body(model=5), "model"),
    "model a dict": (body(model={}), "model"),
    "model too long": (body(model=LONG), "model"),
    "model unknown": (body(model="dall-e-9"), "model"),
    "user a list": (body(user=[]), "user"),
    "user too long": (body(user=LONG), "user"),
    "seed a word": (body(seed="x"), "seed"),
    "seed NaN": (body(seed="NaN"), "seed"),
    "seed Infinity": (body(seed="Infinity"), "seed"),
    "seed of 5,001 digits": (body(seed=HUGE), "seed"),
    "seed past the range": (body(seed=BIG), "seed"),
    "seed negative": (body(seed=-1), "seed"),
    "body a list": ("[]", "body"),
    "body not JSON": ("{", "body"),
    "body nested 100,000 deep": ('{"prompt": ' + "[" * 100_000, "body"),
}


@pytest.mark.parametrize(("payload", "param"), OPENAI_CASES.values(), ids=OPENAI_CASES.keys())
def test_openai_refuses_each_bad_parameter_by_name_and_queues_nothing(
    api, alice, tiny, payload, param
):
    response = send(api(alice), OPENAI, payload)
    assert response.status_code == 400, response.content[:300]
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"
    assert Job.objects.count() == 0


# --- Studio's API: 400, {"errors": {field: message}} --------------------------------------

JOBS_CASES = {
    "prompt missing": (json.dumps({}), "prompt"),
    "prompt a number": (json.dumps({"prompt": 5}), "prompt"),
    "prompt too long": (json.dumps({"prompt": LONG}), "prompt"),
    "prompt with NUL": (json.dumps({"prompt": "red\x00"}), "prompt"),
    "negative too long": (body(negative_prompt=LONG), "negative_prompt"),
    "model a number": (body(model=5), "model"),
    "model too long": (body(model=LONG), "model"),
    "sampler a list": (body(sampler=["Euler a"]), "sampler"),
    "sampler too long": (body(sampler=LONG), "sampler"),
    "steps NaN": (body(steps="NaN"), "steps"),
    "steps Infinity": (body(steps="Infinity"), "steps"),
    "steps of 5,001 digits": (body(steps=HUGE), "steps"),
    "steps past the range": (body(steps=BIG), "steps"),
    "seed of 5,001 digits": (body(seed=HUGE), "seed"),
    "seed negative": (body(seed=-1), "seed"),
    "guidance NaN": (body(guidance_scale="NaN"), "guidance_scale"),
    "guidance -Infinity": (body(guidance_scale="-Infinity"), "guidance_scale"),
    "width past the range": (body(width=BIG), "width"),
    "batch a dict": (body(batch_size={}), "batch_size"),
    "subseed_strength NaN": (body(subseed_strength="NaN"), "subseed_strength"),
    "body a list": ("[]", "prompt"),  # Ninja reads a non-object as an empty one
    "body not JSON": ("{", "__all__"),
}


@pytest.mark.parametrize(("payload", "field"), JOBS_CASES.values(), ids=JOBS_CASES.keys())
def test_the_jobs_api_refuses_each_bad_field_by_name_and_queues_nothing(
    api, alice, tiny, payload, field
):
    response = send(api(alice), JOBS, payload)
    assert response.status_code == 400, response.content[:300]
    assert field in response.json()["errors"], response.json()
    assert Job.objects.count() == 0


# --- The generate form --------------------------------------------------------------------


@pytest.mark.parametrize("field", ["prompt", "negative_prompt", "model", "sampler", "seed"])
def test_the_generate_form_refuses_overlong_text_by_name(client, alice, tiny, field):
    client.force_login(alice)
    data = {"prompt": "red circle", "model": "tiny", "steps": "4", field: LONG}
    response = client.post(reverse("job_submit"), data)
    assert response.status_code == 400
    assert list(response.json()["errors"]) == [field]
    assert Job.objects.count() == 0


def test_overlong_text_is_refused_before_the_blocklist_reads_it(client, alice, tiny):
    BlockedPhrase.objects.create(phrase="forbidden")
    client.force_login(alice)
    response = client.post(reverse("job_submit"), {"prompt": "forbidden " + LONG})
    assert response.json()["errors"]["prompt"].startswith("Enter at most")


# --- Bodies over DATA_UPLOAD_MAX_MEMORY_SIZE ----------------------------------------------


def oversized() -> str:
    return json.dumps({"prompt": "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)})


def test_an_oversized_body_is_413_in_each_apis_shape(api, alice, tiny):
    client = api(alice)
    studio = send(client, JOBS, oversized())
    assert studio.status_code == 413 and "body" in studio.json()["errors"]
    a1111 = send(client, A1111, oversized())
    assert a1111.status_code == 413 and "body" in a1111.json()["errors"]
    openai = send(client, OPENAI, oversized())
    assert openai.status_code == 413 and openai.json()["error"]["param"] == "body"
    assert "body" in openai.json()["error"]["message"]
    assert Job.objects.count() == 0


# --- Off the event loop -------------------------------------------------------------------


@pytest.mark.parametrize(("module", "translator", "path"), [
    (compat_a1111, a1111_request, A1111), (compat_openai, compat_openai, OPENAI),
])
def test_the_async_endpoints_read_the_request_in_a_thread(
    api, alice, tiny, monkeypatch, module, translator, path
):
    where = []

    def spy(original):
        def called(*args):
            try:
                asyncio.get_running_loop()
                where.append("event loop")
            except RuntimeError:
                where.append("thread")
            return original(*args)

        return called

    monkeypatch.setattr(module, "read_body", spy(module.read_body))
    monkeypatch.setattr(translator, "studio_request", spy(translator.studio_request))
    response = send(api(alice), path, body(width=33, size="33x32"))
    assert response.status_code in (400, 422)
    assert where == ["thread", "thread"]


@pytest.mark.django_db(transaction=True)
def test_a_hostile_a1111_request_does_not_stall_the_server(studio_server, alice, token):
    key = token(alice)
    hostile = body(override_settings={"sd_model_checkpoint": " " * 40_000 + "x"}).encode()
    answered = []

    def attack():
        request = urllib.request.Request(
            f"{studio_server.url}{A1111}", data=hostile, method="POST",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        try:
            urllib.request.urlopen(request, timeout=30)  # noqa: S310
        except urllib.error.HTTPError as refused:
            answered.append(refused.code)

    def health_latency() -> float:
        started = time.perf_counter()
        with urllib.request.urlopen(f"{studio_server.url}/healthz", timeout=30) as health:  # noqa: S310
            assert health.status == 200
        return time.perf_counter() - started

    attacker = threading.Thread(target=attack)
    attacker.start()
    latencies = [health_latency()]
    while attacker.is_alive():  # for as long as the hostile request is in flight
        latencies.append(health_latency())
    attacker.join()
    assert answered == [422]
    assert max(latencies) < 0.5, latencies


@pytest.mark.django_db(transaction=True)
def test_an_oversized_body_is_413_through_the_asgi_server(studio_server, alice, token):
    request = urllib.request.Request(
        f"{studio_server.url}{A1111}", data=oversized().encode(), method="POST",
        headers={"Authorization": f"Bearer {token(alice)}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)  # noqa: S310
    assert refused.value.code == 413
    assert "body" in json.loads(refused.value.read())["errors"]


# --- Where the models are kept ------------------------------------------------------------


def test_no_model_listing_tells_where_a_model_is_kept(api, alice, tiny):
    client = api(alice)
    sources = [settings.STUDIO_MODELS["tiny"], str(settings.STUDIO_DEMO_MODEL_PATH)]
    for path in ("/sdapi/v1/sd-models", "/sdapi/v1/options", "/v1/models", "/v1/models/tiny",
                 "/api/v1/models"):
        response = client.get(path)
        assert response.status_code == 200
        assert not any(source in response.content.decode() for source in sources), path
    listed = {model["model_name"]: model for model in client.get("/sdapi/v1/sd-models").json()}
    assert listed["tiny"]["filename"] == "tiny"


def test_a_model_that_cannot_be_read_is_named_without_its_path(api, alice, tiny, settings,
                                                               tmp_path):
    hidden = tmp_path / "secret-models" / "broken"
    hidden.mkdir(parents=True)
    settings.STUDIO_MODELS = {**settings.STUDIO_MODELS, "broken": str(hidden)}
    response = send(api(alice), JOBS, body(model="broken"))
    assert response.status_code == 400 and "model" in response.json()["errors"]
    assert "secret-models" not in response.content.decode()
