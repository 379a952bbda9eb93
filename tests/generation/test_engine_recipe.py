"""The recipe's JSON contract (docs/architecture.md §4) and its validation: one error per bad
field."""

import json
import math
from dataclasses import replace

import pytest

from generation import engine
from generation.engine.samplers import make_scheduler, scheduler_from_ref

from .conftest import MAX_TOKENS

RECIPE_KEYS = {
    "prompt",
    "negative_prompt",
    "model",
    "sampler",
    "scheduler",
    "steps",
    "guidance_scale",
    "seed",
    "batch_size",
    "batch_index",
    "subseed",
    "subseed_strength",
    "width",
    "height",
    "loras",
    "init_image",
    "strength",
    "mask",
    "mask_blur",
    "paste_back",
    "hires",
    "dtype",
    "device",
    "threads",
    "vae_tiling",
    "fast_path",
    "versions",
}


def test_a_generated_recipe_has_exactly_the_design_keys(make_recipe, tiny_pipeline, tiny_model):
    data = engine.generate(make_recipe(), pipeline=tiny_pipeline, preview=None).recipes[0].to_json()
    assert set(data) == RECIPE_KEYS
    assert data["model"] == {
        "name": "tiny",
        "source": tiny_model,
        "hash": engine.weights_hash(tiny_model),
        "family": "sd1",
    }
    assert (
        set(data["scheduler"]) == {"class", "config"}
        and data["scheduler"]["class"] == "DDIMScheduler"
    )
    assert set(data["versions"]) == {"studio", "torch", "diffusers"}
    assert (data["dtype"], data["device"], data["threads"]) == ("float32", "cpu", 1)
    assert data["vae_tiling"] is False
    assert data["fast_path"] == {"compile": "off", "channels_last": False, "fused_qkv": False}


def test_it_round_trips_through_json(make_recipe, tiny_pipeline):
    import json

    recipe = engine.generate(
        make_recipe(sampler="DPM++ SDE Karras"), pipeline=tiny_pipeline, preview=None
    ).recipes[0]
    assert engine.Recipe.from_json(json.loads(json.dumps(recipe.to_json()))) == recipe


def test_a_document_that_is_not_a_recipe_is_refused():
    with pytest.raises(engine.RecipeError) as error:
        engine.Recipe.from_json({"prompt": "x"})
    assert "recipe" in error.value.errors


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("width", 36),
        ("width", 16),
        ("height", 1024),
        ("steps", 0),
        ("steps", 1001),
        ("guidance_scale", math.nan),
        ("guidance_scale", -1.0),
        ("guidance_scale", 30.5),
        ("seed", -1),
        ("seed", 2**32),
        ("subseed", 2**32),
        ("subseed_strength", 1.5),
        ("batch_size", 0),
        ("batch_size", 9),
        ("sampler", "Euler b"),
        ("steps", 2.5),
        ("seed", True),
        ("prompt", "a" * MAX_TOKENS),
        ("negative_prompt", "b" * MAX_TOKENS),
    ],
)
def test_each_invalid_field_gets_its_own_error(field, value, tiny_ref):
    fields = {"prompt": "a red circle", "width": 32, "height": 32, "seed": 1, field: value}
    with pytest.raises(engine.RecipeError) as error:
        engine.build_recipe(model=tiny_ref, **fields)
    assert set(error.value.errors) == {field}


def test_all_bad_fields_are_reported_at_once(tiny_ref):
    with pytest.raises(engine.RecipeError) as error:
        engine.build_recipe(model=tiny_ref, prompt="a", width=33, steps=0, batch_size=20, seed=1)
    assert set(error.value.errors) == {"width", "steps", "batch_size"}


def test_a_prompt_too_long_is_reported_with_its_length(tiny_ref):
    # Letters are one token each here; the window holds MAX_TOKENS - 2 between BOS and EOS.
    with pytest.raises(engine.RecipeError) as error:
        engine.build_recipe(model=tiny_ref, prompt="x" * (MAX_TOKENS - 1), seed=1)
    assert (
        error.value.errors["prompt"]
        == f"is {MAX_TOKENS - 1} tokens long; this model reads at most {MAX_TOKENS - 2}"
    )
    engine.build_recipe(model=tiny_ref, prompt="x" * (MAX_TOKENS - 2), seed=1)


def test_an_unreadable_model_is_an_error_of_the_model_field(tmp_path):
    with pytest.raises(engine.RecipeError) as error:
        engine.build_recipe(model=engine.ModelRef(name="gone", source=str(tmp_path)), prompt="a")
    assert set(error.value.errors) == {"model"}


def test_defaults_come_from_the_model(tiny_ref):
    recipe = engine.build_recipe(model=tiny_ref, prompt="a", seed=1)
    assert (recipe.width, recipe.height) == (32, 32)  # unet sample 8 x VAE factor 4
    assert (
        recipe.sampler == engine.DEFAULT_SAMPLER
        and recipe.guidance_scale == engine.DEFAULT_GUIDANCE
    )


def test_generate_validates_before_running(make_recipe, tiny_pipeline):
    with pytest.raises(engine.RecipeError) as error:
        engine.generate(replace(make_recipe(), steps=0), pipeline=tiny_pipeline)
    assert set(error.value.errors) == {"steps"}


def test_a_model_is_loaded_once_per_device_and_dtype(tiny_model, tiny_pipeline):
    import torch

    assert engine.load_pipeline(tiny_model, device="cpu", dtype=torch.float32) is tiny_pipeline


def test_pickled_weights_are_refused(tmp_path):
    from diffusers import StableDiffusionPipeline

    from .conftest import tiny_components

    StableDiffusionPipeline(**tiny_components()).save_pretrained(tmp_path, safe_serialization=False)
    with pytest.raises(engine.ModelLoadError):
        engine.load_pipeline(str(tmp_path), device="cpu", dtype=__import__("torch").float32)


def test_the_weights_hash_follows_the_content(tiny_model, tmp_path):
    import shutil

    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    assert engine.weights_hash(str(copy)) == engine.weights_hash(tiny_model)
    (copy / "latent_rgb.json").write_text("{}")  # not a weight file
    assert engine.weights_hash(str(copy)) == engine.weights_hash(tiny_model)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert engine.weights_hash(str(copy)) != engine.weights_hash(tiny_model)


def test_cpu_runs_in_float32():
    import torch

    assert engine.resolve_device("cpu") == (torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError):
        engine.resolve_device("tpu")


@pytest.mark.parametrize("sampler", list(engine.SAMPLERS))
def test_every_samplers_recipe_is_strict_json_and_rebuilds_its_scheduler(tiny_ref, sampler):
    """Postgres and strict JSON readers refuse NaN and infinities (DPM-Solver's default
    lambda_min_clipped is -inf): the recorded config must hold none, and still rebuild the
    scheduler exactly."""
    recipe = engine.build_recipe(model=tiny_ref, prompt="red circle", sampler=sampler, seed=1)
    text = json.dumps(recipe.to_json(), allow_nan=False)
    rebuilt = engine.Recipe.from_json(json.loads(text))
    scheduler = scheduler_from_ref(rebuilt.scheduler)
    original = make_scheduler(sampler, engine.load_spec(tiny_ref.source).scheduler_config, 1)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(scheduler.config) == public(original.config)
