"""A recipe read from a file is hostile: the server decides what the worker runs with (threads,
device, dtype), and a foreign scheduler config is accepted only key by key against the
model's own, within bounds, or refused by name, before anything builds a scheduler."""

import json
import time
from dataclasses import replace

import pytest

from generation import engine, services
from generation.demo_model.architecture import sampling_scheduler
from generation.engine.recipe import MAX_PROMPT_CHARS, SchedulerRef
from generation.engine.samplers import scheduler_from_ref
from generation.engine.schedules import TUNABLE, check_scheduler, resolved_ref
from generation.models import Job

from .conftest import DEMO_WEIGHTS


def with_config(recipe: engine.Recipe, **changes) -> engine.Recipe:
    config = {**recipe.scheduler.config, **changes}
    return replace(recipe, scheduler=replace(recipe.scheduler, config=config))


def errors_of(recipe: engine.Recipe) -> dict[str, str]:
    with pytest.raises(engine.RecipeError) as refused:
        engine.validate_recipe(recipe)
    return refused.value.errors


# --- The worker's own settings ------------------------------------------------------------


@pytest.mark.django_db
def test_a_queued_recipe_leaves_threads_device_and_dtype_to_the_worker(alice, make_recipe):
    recipe = {**make_recipe().to_json(), "threads": 2**40, "device": "cuda", "dtype": "float16"}
    job = services.job_submit(user=alice, recipe=recipe)
    job.refresh_from_db()
    assert (job.recipe["threads"], job.recipe["device"], job.recipe["dtype"]) == (None,) * 3
    assert job.recipe["prompt"] == recipe["prompt"]


@pytest.mark.parametrize("threads", [0, -1, 2**40, True, 2.0, "4"])
def test_absurd_threads_are_refused_by_name(make_recipe, threads):
    assert set(errors_of(replace(make_recipe(), threads=threads))) == {"threads"}


def test_a_recipe_may_pin_the_threads_it_was_made_with(make_recipe):
    engine.validate_recipe(replace(make_recipe(), threads=16))


# --- Scheduler configs --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num_train_timesteps", 10**6),
        ("num_train_timesteps", 10**9),
        ("num_train_timesteps", 1000.0),  # equal, but not the same JSON type
        ("beta_schedule", "linear"),
        ("beta_start", 0.5),
        ("beta_end", [0.02]),
        ("prediction_type", "epsilon"),
        ("rescale_betas_zero_snr", True),
        ("trained_betas", [0.5] * 5),
        ("trained_betas", [0.5] * 10**6),
        ("trained_betas", None),
        ("_use_default_values", ["trained_betas"]),
        ("_class_name", "EulerDiscreteScheduler"),
        ("use_karras_sigmas", True),  # the sampler's name decides the spacing
        ("sample_max_value", 1e30),
        ("thresholding", 1),  # a bool is a bool
        ("timestep_spacing", "sideways"),
        ("timestep_spacing", ["trailing"]),
        ("steps_offset", 500),
        ("not_a_setting", 1),
    ],
)
def test_a_foreign_scheduler_setting_is_refused_by_name(make_recipe, key, value):
    assert set(errors_of(with_config(make_recipe(sampler="DDIM"), **{key: value}))) == {
        f"scheduler.config.{key}"
    }


def test_the_sde_samplers_noise_seeds_must_be_the_recipes(make_recipe):
    recipe = with_config(make_recipe(sampler="DPM++ SDE Karras", batch_size=2),
                         noise_sampler_seed=[0, 1])
    assert set(errors_of(recipe)) == {"scheduler.config.noise_sampler_seed"}


def test_a_missing_schedule_setting_is_refused_and_a_missing_knob_is_not(make_recipe):
    recipe = make_recipe()
    config = {k: v for k, v in recipe.scheduler.config.items()
              if k not in ("trained_betas", "thresholding")}
    errors = errors_of(replace(recipe, scheduler=replace(recipe.scheduler, config=config)))
    assert set(errors) == {"scheduler.config.trained_betas"}
    assert errors["scheduler.config.trained_betas"].startswith("is missing")


@pytest.mark.parametrize("class_name", ["EulerDiscreteScheduler", "os", "", 7])
def test_the_scheduler_class_must_be_the_samplers(make_recipe, class_name):
    recipe = make_recipe(sampler="DDIM")
    recipe = replace(recipe, scheduler=replace(recipe.scheduler, class_name=class_name))
    assert set(errors_of(recipe)) == {"scheduler.class"}


def test_a_config_with_more_settings_than_the_class_is_refused_whole(make_recipe):
    recipe = with_config(make_recipe(), **{f"k{i}": i for i in range(100_000)})
    started = time.perf_counter()
    assert set(errors_of(recipe)) == {"scheduler.config"}
    assert time.perf_counter() - started < 0.5


def test_the_worker_refuses_a_foreign_schedule_before_building_it(make_recipe, tiny_pipeline):
    # A KDPM2 scheduler computes its sigmas as it is built, in time that grows with
    # num_train_timesteps: checked first, the run is refused at once.
    recipe = with_config(make_recipe(sampler="DPM2"), num_train_timesteps=10**6)
    started = time.perf_counter()
    with pytest.raises(engine.RecipeError) as refused:
        engine.generate(recipe, pipeline=tiny_pipeline, preview=None)
    assert set(refused.value.errors) == {"scheduler.config.num_train_timesteps"}
    assert time.perf_counter() - started < 1


def test_a_message_quotes_a_huge_value_only_in_part(make_recipe):
    errors = errors_of(with_config(make_recipe(), beta_schedule="x" * 10**6))
    assert len(errors["scheduler.config.beta_schedule"]) < 200


@pytest.mark.parametrize("name", list(engine.SAMPLERS))
def test_every_tunable_value_builds_every_samplers_scheduler(name):
    # A short schedule keeps the slow-to-build samplers (DPM2) quick; the rule is the same.
    base = {**sampling_scheduler().config, "num_train_timesteps": 100}
    ref = resolved_ref(name, base, 5, 2)
    for key in TUNABLE.keys() & ref.config.keys():
        for value in TUNABLE[key]:
            tuned = SchedulerRef(ref.class_name, {**ref.config, key: value})
            assert check_scheduler(tuned, name, base, 5, 2) == {}
            scheduler_from_ref(tuned).set_timesteps(20)


# --- Studio's own recipes -----------------------------------------------------------------


def models(tiny_ref) -> list[engine.ModelRef]:
    demo = [engine.ModelRef(name="demo", source=str(DEMO_WEIGHTS))]
    return [tiny_ref, *(demo if (DEMO_WEIGHTS / "model_index.json").is_file() else [])]


@pytest.mark.django_db
@pytest.mark.parametrize("name", list(engine.SAMPLERS))
def test_every_recipe_studio_makes_validates_after_a_trip_through_the_database(
    name, tiny_ref, alice
):
    for model in models(tiny_ref):
        made = engine.build_recipe(model=model, prompt="red circle", sampler=name, seed=3,
                                   batch_size=2)
        job = Job.objects.create(owner=alice, recipe=made.to_json(), total_steps=made.steps)
        job.refresh_from_db()
        engine.validate_recipe(engine.Recipe.from_json(job.recipe))
        engine.validate_recipe(engine.Recipe.from_json(json.loads(json.dumps(made.to_json()))))


def test_a_generated_recipe_validates_again(make_recipe, tiny_pipeline):
    made = engine.generate(make_recipe(sampler="DPM++ SDE Karras", batch_size=2),
                           pipeline=tiny_pipeline, preview=None).recipes[1]
    engine.validate_recipe(engine.Recipe.from_json(json.loads(json.dumps(made.to_json()))))


# --- Shapes and sizes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("model", "hash"), 12345, "model.hash"),
        (("model", "name"), ["tiny"], "model.name"),
        (("versions",), {"studio": 1, "torch": "2", "diffusers": "0"}, "versions.studio"),
        (("scheduler", "class"), None, "scheduler.class"),
        (("scheduler", "config"), [1, 2], "scheduler.config"),
    ],
)
def test_a_part_of_the_wrong_shape_is_refused_by_name(make_recipe, path, value, field):
    data = make_recipe().to_json()
    *parents, last = path
    target = data
    for key in parents:
        target = target[key]
    target[last] = value
    with pytest.raises(engine.RecipeError) as refused:
        engine.Recipe.from_json(data)
    assert set(refused.value.errors) == {field}


@pytest.mark.parametrize("sampler", [["DDIM"], {"a": 1}, 7, None])
def test_a_sampler_that_is_not_text_is_refused_by_name(make_recipe, sampler):
    assert set(errors_of(replace(make_recipe(), sampler=sampler))) == {"sampler"}


def test_a_huge_prompt_is_refused_before_it_is_tokenized(make_recipe):
    errors = errors_of(replace(make_recipe(), prompt="a " * MAX_PROMPT_CHARS))
    assert errors == {"prompt": f"is {2 * MAX_PROMPT_CHARS} characters long; the most is "
                                f"{MAX_PROMPT_CHARS}"}
