"""Picking models over the AUTOMATIC1111 API: `sd-models` with A1111's titles, each caller's
own model set with `POST /options` and used by their txt2img calls, the folder rescans, the
LoRA listing, and no hashing in a web request. The clients' own calls (webuiapi's
util_get_model_names, util_set_model, util_get_current_model) run against a live server."""

import os
from pathlib import Path

import pytest
import webuiapi
from django.test import Client

from gallery.models import Image
from generation import engine, registry
from generation.models import DefaultModel, Job, WeightsHash
from tests.generation.test_models_dir import use_models_dir, write_safetensors

pytestmark = pytest.mark.django_db


@pytest.fixture
def models_dir(settings, tmp_path, tiny_model) -> Path:
    return use_models_dir(settings, tmp_path / "models", tiny_model)


def caller(token, user) -> Client:
    return Client(headers={"Authorization": f"Bearer {token(user)}"})


def sd_models(client: Client) -> dict[str, dict]:
    response = client.get("/sdapi/v1/sd-models")
    assert response.status_code == 200
    return {model["model_name"]: model for model in response.json()}


def tiny_hashed(tiny_model) -> str:
    """What a worker or `manage.py models` does: hash the tiny model and keep the hash."""
    return registry.weights_hash(tiny_model)


def test_sd_models_gives_titles_and_no_server_path(models_dir, tiny, tiny_model, alice, token):
    client = caller(token, alice)
    listed = sd_models(client)
    assert {"tiny", "tiny-folder", "tiny-file"} <= set(listed)
    assert listed["tiny-folder"] == {"title": "tiny-folder", "model_name": "tiny-folder",
                                     "hash": None, "sha256": None, "filename": "tiny-folder",
                                     "config": None}
    assert listed["tiny-file"]["filename"] == "tiny-file.safetensors"
    digest = tiny_hashed(tiny_model)
    listed = sd_models(client)
    for name in ("tiny", "tiny-folder"):  # one model's files, under two names
        assert listed[name]["title"] == f"{name} [{digest[:10]}]"
        assert (listed[name]["hash"], listed[name]["sha256"]) == (digest[:10], digest)
    text = client.get("/sdapi/v1/sd-models").content.decode()
    assert str(models_dir) not in text and tiny_model not in text


def test_a_web_request_never_hashes(models_dir, tiny, tiny_model, alice, token):
    """Listing, reading options and submitting a job on a model whose hash is not known yet
    all answer, and leave the hash for the worker: the job's recipe has none, and no
    WeightsHash row is written."""
    client = caller(token, alice)
    assert sd_models(client)["tiny-folder"]["sha256"] is None
    assert client.post("/sdapi/v1/options", {"sd_model_checkpoint": "tiny-folder"},
                       content_type="application/json").status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_checkpoint_hash"] is None
    response = client.post("/api/v1/jobs", {"prompt": "red circle", "model": "tiny-folder",
                                            "steps": 2}, content_type="application/json")
    assert response.status_code == 201, response.content
    assert Job.objects.get().recipe["model"]["hash"] == ""
    assert not WeightsHash.objects.exists()
    # What the worker does before it runs the job (generation/runner.py); then the listing
    # shows the hash without hashing again.
    digest = registry.weights_hash(str(models_dir / "tiny-folder"))
    assert WeightsHash.objects.get().sha256 == digest == engine.weights_hash(tiny_model)
    assert sd_models(client)["tiny-folder"]["sha256"] == digest


def test_options_set_only_the_callers_own_model(models_dir, tiny, tiny_model, alice, bob,
                                                 token):
    as_alice, as_bob = caller(token, alice), caller(token, bob)
    digest = tiny_hashed(tiny_model)
    title = f"tiny-folder [{digest[:10]}]"
    response = as_alice.post("/sdapi/v1/options", {"sd_model_checkpoint": title},
                             content_type="application/json")
    assert response.status_code == 200 and response.json() is None
    assert as_alice.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == title
    assert as_alice.get("/sdapi/v1/options").json()["sd_checkpoint_hash"] == digest
    assert as_bob.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == f"tiny [{digest[:10]}]"
    # By its bare name too, as Open WebUI may send it; the file's model has no hash yet.
    as_bob.post("/sdapi/v1/options", {"sd_model_checkpoint": "tiny-file"},
                content_type="application/json")
    assert as_bob.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "tiny-file"
    assert as_alice.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == title
    assert dict(DefaultModel.objects.values_list("user__username", "model")) == {
        "alice": "tiny-folder", "bob": "tiny-file"}


def test_an_unknown_model_or_setting_is_refused_by_name_and_nothing_is_stored(
    models_dir, tiny, alice, token
):
    client = caller(token, alice)
    for body, field in (({"sd_model_checkpoint": "nope [0123456789]"}, "sd_model_checkpoint"),
                        ({"sd_model_checkpoint": "tiny-folder", "CLIP_stop_at_last_layers": 2},
                         "CLIP_stop_at_last_layers"),
                        ({"sd_model_checkpoint": "tiny-folder", "samples_format": "jpg"},
                         "samples_format")):
        response = client.post("/sdapi/v1/options", body, content_type="application/json")
        assert response.status_code == 422 and list(response.json()["errors"]) == [field]
    assert not DefaultModel.objects.exists()
    # What Studio has already, sent back as a client read it, is accepted.
    current = client.get("/sdapi/v1/options").json()
    assert client.post("/sdapi/v1/options", current,
                       content_type="application/json").status_code == 200


def test_options_need_a_caller(models_dir, tiny):
    assert Client().get("/sdapi/v1/options").status_code == 401
    response = Client().post("/sdapi/v1/options", {"sd_model_checkpoint": "tiny"},
                             content_type="application/json")
    assert response.status_code == 401 and not DefaultModel.objects.exists()


def test_a_chosen_model_that_left_is_refused_not_replaced(models_dir, tiny, alice, token):
    client = caller(token, alice)
    client.post("/sdapi/v1/options", {"sd_model_checkpoint": "tiny-file"},
                content_type="application/json")
    (models_dir / "tiny-file.safetensors").unlink()
    response = client.post("/sdapi/v1/txt2img", {"prompt": "red circle"},
                           content_type="application/json")
    assert response.status_code == 422
    assert "tiny-file" in response.json()["errors"]["sd_model_checkpoint"]
    assert not Job.objects.exists()


def test_refresh_checkpoints_rescans_the_models_folder(models_dir, tiny, tiny_model, alice,
                                                       token):
    client = caller(token, alice)
    assert "later" not in sd_models(client)
    # A file system with a coarse clock: the folder's mtime does not move for the new file.
    stat = models_dir.stat()
    write_safetensors(models_dir / "later.safetensors")
    Path(models_dir / "linked").symlink_to(tiny_model, target_is_directory=True)
    os.utime(models_dir, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert "later" not in sd_models(client)
    response = client.post("/sdapi/v1/refresh-checkpoints")
    assert response.status_code == 200 and response.json() is None
    assert {"later", "linked"} <= set(sd_models(client))


def test_loras_are_listed_as_a1111_lists_them(models_dir, tiny, alice, token):
    client = caller(token, alice)
    assert client.get("/sdapi/v1/loras").json() == [{
        "name": "style", "alias": "style", "path": "style.safetensors",
        "metadata": {"ss_network_dim": "4", "ss_tag_frequency": {"set": {"red": 2}}},
    }]
    lora_dir = models_dir / "lora"
    stat = lora_dir.stat()
    write_safetensors(lora_dir / "ink.safetensors")
    os.utime(lora_dir, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert [lora["name"] for lora in client.get("/sdapi/v1/loras").json()] == ["style"]
    assert client.post("/sdapi/v1/refresh-loras").status_code == 200
    assert [lora["name"] for lora in client.get("/sdapi/v1/loras").json()] == ["ink", "style"]
    assert str(models_dir) not in client.get("/sdapi/v1/loras").content.decode()


# --- With a live server and a real worker -------------------------------------------------


def webui(server, username, password) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port, username=username,
                             password=password, sampler="Euler a", steps=3)


def test_webuiapi_picks_a_model_per_caller_and_txt2img_uses_it(
    studio_server, module_worker, models_dir, tiny, tiny_model, alice, bob, token
):
    as_alice = webui(studio_server, "alice", token(alice))
    as_bob = webui(studio_server, "bob", token(bob))
    assert {"tiny", "tiny-folder", "tiny-file"} <= set(as_alice.util_get_model_names())
    as_alice.util_set_model("tiny-folder")
    assert as_alice.util_get_current_model() == "tiny-folder"
    assert as_bob.util_get_current_model() == "tiny"
    assert not WeightsHash.objects.filter(path=str(Path(tiny_model).resolve())).exists()

    result = as_alice.txt2img(prompt="red circle", seed=5, width=32, height=32)
    job = Job.objects.get(owner=alice)
    assert job.recipe["model"] == {"name": "tiny-folder", "source": str(models_dir / "tiny-folder"),
                                   "hash": "", "family": "sd1"}  # made in a web request: no hash
    # The worker hashed the weights before it ran them, and keeps the hash for every process.
    digest = WeightsHash.objects.get(path=str(Path(tiny_model).resolve())).sha256
    assert digest == engine.weights_hash(tiny_model)
    assert result.info["sd_model_name"] == "tiny-folder"
    assert result.info["sd_model_hash"] == digest[:10]
    assert as_alice.util_get_current_model() == f"tiny-folder [{digest[:10]}]"
    assert Image.objects.get(owner=alice).output.recipe["model"]["hash"] == digest

    as_bob.txt2img(prompt="red circle", seed=5, width=32, height=32)
    assert Job.objects.get(owner=bob).recipe["model"]["name"] == "tiny"
    assert as_bob.get_options()["sd_model_checkpoint"] == f"tiny [{digest[:10]}]"
