"""The engine's commands: generate, reproduce, samplers and models."""

import json
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from generation import engine

# The commands name models through the registry, which reads the admin's models too.
pytestmark = pytest.mark.django_db


@pytest.fixture
def tiny_registered(settings, tiny_model):
    settings.STUDIO_MODELS = {"tiny": tiny_model}
    settings.STUDIO_DEFAULT_MODEL = "tiny"
    settings.STUDIO_DEVICE = "cpu"
    settings.STUDIO_THREADS = 1
    return tiny_model


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_generate_writes_one_png_per_image_and_ends_with_json(tiny_registered, tmp_path):
    output = run(
        "generate",
        "--prompt",
        "a red circle",
        "--steps",
        "3",
        "--seed",
        "5",
        "--batch",
        "2",
        "--sampler",
        "Euler a",
        "--out",
        str(tmp_path / "out"),
        "--json",
    )
    images = json.loads(output.strip().splitlines()[-1])["images"]
    assert [image["recipe"]["batch_index"] for image in images] == [0, 1]
    for image in images:
        recipe, parameters = engine.read_png(Path(image["file"]).read_bytes())
        assert image["file"].startswith(str(tmp_path)) and recipe.to_json() == image["recipe"]
        assert recipe.seed == 5 and recipe.sampler == "Euler a" and recipe.model.name == "tiny"
    assert "Seed: 6," in engine.read_png(Path(images[1]["file"]).read_bytes())[1]


def test_generate_reports_each_bad_option(tiny_registered, tmp_path):
    with pytest.raises(CommandError) as error:
        run("generate", "--prompt", "a", "--steps", "0", "--width", "30", "--out", str(tmp_path))
    assert "--steps:" in str(error.value) and "--width:" in str(error.value)
    with pytest.raises(CommandError, match="unknown model"):
        run("generate", "--prompt", "a", "--model", "nope", "--out", str(tmp_path))


def test_reproduce_reruns_the_recipe_in_a_png(tiny_registered, tmp_path):
    first = run(
        "generate",
        "--prompt",
        "a blue square",
        "--steps",
        "3",
        "--batch",
        "2",
        "--out",
        str(tmp_path / "a"),
        "--json",
    )
    file = json.loads(first.strip().splitlines()[-1])["images"][1]["file"]
    report = json.loads(
        run("reproduce", file, "--out", str(tmp_path / "b"), "--json").strip().splitlines()[-1]
    )
    assert report["verdict"] == "identical" and report["max_diff"] == 0
    assert "identical" in run("reproduce", file, "--out", str(tmp_path / "c"))


def test_reproduce_refuses_other_weights(tiny_registered, tmp_path, make_recipe, tiny_pipeline):
    from dataclasses import replace

    result = engine.generate(make_recipe(), pipeline=tiny_pipeline, preview=None)
    recipe = result.recipes[0]
    forged = replace(recipe, model=replace(recipe.model, hash="0" * 64))
    (tmp_path / "x.png").write_bytes(engine.png_with_recipe(result.images[0], forged))
    with pytest.raises(CommandError, match="cannot be reproduced"):
        run("reproduce", str(tmp_path / "x.png"), "--out", str(tmp_path / "out"))


def test_samplers_lists_every_name():
    assert json.loads(run("samplers", "--json")) == list(engine.SAMPLERS)
    assert len(engine.SAMPLERS) >= 16


def test_models_lists_name_source_hash_family_and_size(tiny_registered):
    rows = {row["name"]: row for row in json.loads(run("models", "--json"))}
    tiny = rows["tiny"]
    assert (tiny["source"], tiny["hash"], tiny["native_size"]) == (
        tiny_registered, engine.weights_hash(tiny_registered), 32)
    assert tiny["family"] is None or isinstance(tiny["family"], str)
    assert all(set(row) == {"name", "source", "hash", "family", "native_size"}
               for row in rows.values())
