"""The AUTOMATIC1111-compatible API, driven by the real `webuiapi` package against a
live server and, for generation, a real Celery worker."""

import base64
import io
import time
from datetime import timedelta

import pytest
import webuiapi
from django.test import Client
from django.utils import timezone
from PIL import Image as PILImage

from gallery.models import Image
from generation import broadcast, engine
from generation.a1111_request import Txt2ImgIn, model_name, studio_request
from generation.job_request import Refused
from generation.models import Job

TINY = {"sd_model_checkpoint": "tiny"}


def webui(server, username=None, password=None) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port, username=username,
                             password=password, sampler="Euler a", steps=4)


def test_txt2img_makes_pngs_of_the_requested_size_and_seed(
    studio_server, module_worker, alice, token, tiny
):
    api = webui(studio_server, "alice", token(alice))
    result = api.txt2img(prompt="red circle", seed=1234, width=32, height=32, batch_size=1,
                         n_iter=2, cfg_scale=3, override_settings=TINY)
    assert [image.size for image in result.images] == [(32, 32), (32, 32)]
    assert result.info["all_seeds"] == [1234, 1235] and result.info["seed"] == 1234
    assert result.info["sampler_name"] == "Euler a" and result.info["version"] != "studio-"
    for index, encoded in enumerate(result.json["images"]):
        recipe, parameters = engine.read_png(base64.b64decode(encoded))
        assert recipe.seed == 1234 and recipe.batch_index == index
        assert parameters == result.info["infotexts"][index]
        assert f"Seed: {1234 + index}," in parameters
    with PILImage.open(io.BytesIO(base64.b64decode(result.json["images"][0]))) as png:
        assert png.format == "PNG" and "Sampler: Euler a" in png.info["parameters"]
    assert Image.objects.filter(owner=alice).count() == 2


def test_a_bearer_token_works_and_seed_minus_one_is_random(
    studio_server, module_worker, alice, token, tiny
):
    api = webui(studio_server)
    api.session.headers["Authorization"] = f"Bearer {token(alice)}"
    result = api.txt2img(prompt="red circle", seed=-1, width=32, height=32,
                         sampler_name="LMS", scheduler="Karras", send_images=False)
    assert result.images == [] and 0 <= result.info["seed"] <= engine.SEED_MAX
    assert result.info["sampler_name"] == "LMS Karras"


def test_unauthenticated_calls_are_refused(studio_server, alice, token):
    for api in (webui(studio_server), webui(studio_server, "alice", "st_wrong"),
                webui(studio_server, "bob", token(alice))):
        with pytest.raises(RuntimeError) as refused:
            api.txt2img(prompt="red circle")
        assert refused.value.args[0] == 401
    assert Job.objects.count() == 0


def test_enabled_features_studio_lacks_are_refused_by_name(studio_server, alice, token, tiny):
    api = webui(studio_server, "alice", token(alice))
    with pytest.raises(RuntimeError) as refused:
        api.txt2img(prompt="red circle", tiling=True, restore_faces=True)
    status, text = refused.value.args
    assert status == 422 and "tiling" in text and "restore_faces" in text
    with pytest.raises(RuntimeError) as bad_size:
        api.txt2img(prompt="red circle", width=33, cfg_scale=99)
    assert '"width"' in bad_size.value.args[1] and '"cfg_scale"' in bad_size.value.args[1]
    assert Job.objects.count() == 0


def test_limits_apply(studio_server, alice, token, tiny, settings):
    settings.STUDIO_MAX_QUEUED_PER_USER = 0
    with pytest.raises(RuntimeError) as refused:
        webui(studio_server, "alice", token(alice)).txt2img(prompt="red circle", width=32,
                                                            height=32)
    assert refused.value.args[0] == 429


def test_it_lists_samplers_models_and_options(studio_server, alice, token, tiny):
    api = webui(studio_server, "alice", token(alice))
    assert set(engine.SAMPLERS) == set(api.util_get_sampler_names())
    assert "tiny" in api.util_get_model_names()
    assert api.util_get_current_model() == "tiny"
    assert api.util_get_scheduler_names() == ["automatic", "karras", "uniform"]


# --- Without a live server ----------------------------------------------------------------


def params(**fields):
    return studio_request(Txt2ImgIn(prompt="red circle", **fields))


def test_scheduler_maps_onto_studio_samplers():
    assert params(sampler_name="DPM++ 2M", scheduler="Karras").sampler == "DPM++ 2M Karras"
    assert params(sampler_name="Euler a", scheduler="automatic").sampler == "Euler a"
    assert params(sampler_index="PLMS").sampler == "PNDM"
    assert params().sampler == engine.DEFAULT_SAMPLER
    for scheduler in ("Exponential", "karras"):
        with pytest.raises(Refused) as refused:
            params(sampler_name="Euler a", scheduler=scheduler)
        assert list(refused.value.errors) == ["scheduler"]


def test_fields_at_their_defaults_are_accepted():
    # What webuiapi sends on every call, besides the prompt.
    defaults = {
        "enable_hr": False, "denoising_strength": 0.7, "firstphase_width": 0, "hr_scale": 2,
        "hr_upscaler": "Latent", "hr_checkpoint_name": None, "styles": [], "seed": -1,
        "subseed": -1, "subseed_strength": 0.0, "seed_resize_from_h": 0, "restore_faces": False,
        "tiling": False, "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1,
        "override_settings": {}, "script_name": None, "script_args": [], "send_images": True,
        "save_images": False, "alwayson_scripts": {"ControlNet": {"args": []}},
        "n_iter": 2, "batch_size": 3,
    }
    translated = params(**defaults)
    assert translated.seed is None and translated.subseed == 0
    assert translated.batch_size == 6


def test_switched_on_scripts_and_settings_are_refused_by_name():
    with pytest.raises(Refused) as refused:
        params(alwayson_scripts={"ADetailer": {"args": [True, {}]}},
               override_settings={"CLIP_stop_at_last_layers": 2}, script_name="x/y/z plot")
    assert set(refused.value.errors) == {
        "alwayson_scripts.ADetailer", "override_settings.CLIP_stop_at_last_layers", "script_name"
    }


@pytest.mark.django_db
def test_progress_reports_my_running_job(alice, bob, token):
    headers = {"Authorization": f"Bearer {token(alice)}"}
    idle = Client().get("/sdapi/v1/progress", headers=headers).json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    started = timezone.now() - timedelta(seconds=10)
    job = Job.objects.create(owner=alice, recipe={}, status=Job.Status.RUNNING, step=5,
                             total_steps=10, started_at=started)
    Job.objects.create(owner=bob, recipe={}, status=Job.Status.RUNNING, step=1, total_steps=10,
                       started_at=timezone.now())
    running = Client().get("/sdapi/v1/progress", headers=headers).json()
    assert running["progress"] == 0.5 and running["state"]["job"] == str(job.pk)
    assert running["state"]["sampling_step"] == 5 and 9 < running["eta_relative"] < 12
    assert running["current_image"] is None  # no step of this attempt kept yet
    keep_progress(job, attempt=job.attempt + 1)  # another attempt's: not this one's
    assert Client().get("/sdapi/v1/progress", headers=headers).json()["current_image"] is None
    preview = keep_progress(job, attempt=job.attempt)
    current = Client().get("/sdapi/v1/progress", headers=headers).json()["current_image"]
    assert base64.b64decode(current) == preview
    assert PILImage.open(io.BytesIO(base64.b64decode(current))).format == "WEBP"


def keep_progress(job, *, attempt) -> bytes:
    """What a worker's sidecar keeps for a step: a real WebP preview."""
    buffer = io.BytesIO()
    PILImage.new("RGB", (8, 8), "red").save(buffer, format="WEBP")
    broadcast.send(job.group_name, {
        "type": "job.progress", "job": str(job.pk), "attempt": attempt, "step": job.step,
        "total": job.total_steps, "elapsed": 1.0,
        "preview": "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode(),
    }, keep=True)
    return buffer.getvalue()


def test_a_model_title_loses_its_hash_suffix_by_a1111s_rule():
    cases = {"tiny [abc123]": "tiny", "tiny[ABCdef]": "tiny", "tiny \t [0]": "tiny",
             "a [b] [0f]": "a [b]", "tiny": "tiny", "tiny [xyz]": "tiny [xyz]",
             "tiny []": "tiny []", "tiny [0f] ": "tiny [0f] ", "[0f]": "", "": ""}
    for title, name in cases.items():
        assert model_name(title) == name, title


@pytest.mark.parametrize("title", [" " * 10**6, " " * 10**6 + "x", " " * 10**6 + "[0]x",
                                   "[" * 10**6 + "]", "x [" + "0" * 10**6 + "]",
                                   "x [" + "0" * 10**6 + "g]"])
def test_a_hostile_model_title_is_read_in_linear_time(title):
    started = time.perf_counter()
    model_name(title)
    assert time.perf_counter() - started < 0.1
