"""img2img (generation/engine/image_runs.py): the pixels of stock diffusers'
StableDiffusionImg2ImgPipeline given the same modules, scheduler, image, strength and CPU
generators seed + i; the steps actually run are counted, previewed and cancellable; what
the recipe names must be given."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

from generation import engine

from .conftest import (
    DEMO_WEIGHTS,
    assert_same_pixels,
    cpu_generators,
    picture,
    stock_view,
    stored_image,
)

PROMPT = "a red circle"


def stock_img2img(pipeline, recipe: engine.Recipe, image) -> list:
    cls = (StableDiffusionXLImg2ImgPipeline if recipe.model.family == "sdxl"
           else StableDiffusionImg2ImgPipeline)
    return stock_view(cls, pipeline, recipe)(
        recipe.prompt,
        image=image,
        strength=recipe.strength,
        negative_prompt=recipe.negative_prompt or None,
        num_inference_steps=recipe.steps,
        guidance_scale=recipe.guidance_scale,
        num_images_per_prompt=recipe.batch_size,
        generator=cpu_generators(recipe.seed, recipe.batch_size),
    ).images


@pytest.mark.parametrize("sampler", ["DDIM", "Euler a", "DPM++ 2M SDE"])
def test_img2img_matches_the_stock_pipeline_pixel_for_pixel(sampler, make_recipe, tiny_pipeline):
    source = stored_image(picture())
    recipe = make_recipe(init_image=source.ref, strength=0.75, sampler=sampler, batch_size=2,
                         guidance_scale=4.0, negative_prompt="blue")
    ours = engine.generate(recipe, pipeline=tiny_pipeline, inputs={source.ref.sha256: source.png})
    assert_same_pixels(ours.images, stock_img2img(tiny_pipeline, ours.recipes[0], source.image))
    assert ours.recipes[0].init_image == source.ref and ours.recipes[0].strength == 0.75


def test_an_init_image_of_another_size_is_resized_as_the_stock_processor_does(
    make_recipe, tiny_pipeline
):
    source = stored_image(picture(45, 30))
    recipe = make_recipe(init_image=source.ref, strength=0.5, width=40, height=32)
    ours = engine.generate(recipe, pipeline=tiny_pipeline, inputs={source.ref.sha256: source.png},
                           preview=None)
    resized = tiny_pipeline.image_processor.resize(source.image, 32, 40)
    assert ours.images[0].size == (40, 32)
    assert_same_pixels(ours.images, stock_img2img(tiny_pipeline, ours.recipes[0], resized))


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_img2img_matches_stock_on_sd2_and_sdxl(family, family_models, family_pipeline):
    pipeline = family_pipeline(family)
    source = stored_image(picture(64, 64))
    ref = engine.ModelRef(name=family, source=family_models[family].folder)
    recipe = engine.build_recipe(model=ref, prompt=PROMPT, steps=4, seed=5, batch_size=2,
                                 init_image=source.ref, strength=0.5, sampler="Euler a")
    previews = []
    ours = engine.generate(recipe, pipeline=pipeline, inputs={source.ref.sha256: source.png},
                           on_step=lambda step, total, preview, _: previews.append(preview))
    assert len(previews) == 2 and all(preview.render() for preview in previews)
    assert_same_pixels(ours.images, stock_img2img(pipeline, ours.recipes[0], source.image))


@pytest.mark.parametrize(("sampler", "steps", "strength", "run"),
                         [("DDIM", 4, 0.5, 2), ("Heun", 5, 0.6, 3), ("DPM2", 4, 0.75, 3)])
def test_on_step_counts_the_steps_actually_run_each_with_a_preview(
    sampler, steps, strength, run, make_recipe, tiny_pipeline
):
    source = stored_image(picture())
    recipe = make_recipe(init_image=source.ref, strength=strength, sampler=sampler, steps=steps)
    assert engine.steps_run(recipe) == run
    seen = []
    engine.generate(recipe, pipeline=tiny_pipeline, inputs={source.ref.sha256: source.png},
                    on_step=lambda step, total, preview, _: seen.append((step, total, preview)))
    assert [(step, total) for step, total, _ in seen] == [(i, run) for i in range(1, run + 1)]
    assert all(preview is not None and preview.render() for _, _, preview in seen)


def test_cancel_stops_an_img2img_run(make_recipe, tiny_pipeline):
    source = stored_image(picture())
    recipe = make_recipe(init_image=source.ref, strength=1.0, steps=4)
    steps = []
    result = engine.generate(
        recipe, pipeline=tiny_pipeline, inputs={source.ref.sha256: source.png},
        on_step=lambda step, *_: steps.append(step), should_cancel=lambda: len(steps) >= 2,
    )
    assert result.canceled and result.images == [] and steps == [1, 2]


def test_an_input_not_given_is_an_input_missing_error_naming_it(make_recipe, tiny_pipeline):
    source = stored_image(picture())
    recipe = make_recipe(init_image=source.ref, strength=0.5)
    with pytest.raises(engine.InputMissingError, match=source.ref.sha256[:12]) as caught:
        engine.generate(recipe, pipeline=tiny_pipeline)
    assert caught.value.sha256 == source.ref.sha256
    assert isinstance(caught.value, engine.GenerationError)
    other = stored_image(picture(32, 32).rotate(90))
    with pytest.raises(engine.GenerationError, match="another file"):
        engine.generate(recipe, pipeline=tiny_pipeline, inputs={source.ref.sha256: other.png})


def test_an_img2img_recipe_reproduces_identically(make_recipe, tiny_pipeline):
    source = stored_image(picture())
    inputs = {source.ref.sha256: source.png}
    recipe = make_recipe(init_image=source.ref, strength=0.5, batch_size=2, sampler="Euler a")
    result = engine.generate(recipe, pipeline=tiny_pipeline, inputs=inputs, preview=None)
    stored = engine.Recipe.from_json(result.recipes[1].to_json())
    image, comparison = engine.reproduce(stored, result.images[1], pipeline=tiny_pipeline,
                                         inputs=inputs)
    assert comparison.verdict == engine.IDENTICAL
    with pytest.raises(engine.InputMissingError):
        engine.reproduce(stored, result.images[1], pipeline=tiny_pipeline)


def distance(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean())


def test_strength_near_0_keeps_the_input_and_1_ignores_it(demo_pipeline):
    """On the demo model, whose VAE was trained: at strength 0.05 (one step of 20) the output
    is the input's VAE round trip, give or take; at 1 it is as far from either input as a
    picture from noise, and two different inputs come out nearly alike."""
    ref = engine.ModelRef(name="demo", source=str(DEMO_WEIGHTS))
    first, second = stored_image(picture(64, 64)), stored_image(picture(64, 64).rotate(90))
    inputs = {first.ref.sha256: first.png, second.ref.sha256: second.png}

    def run(source, strength):
        recipe = engine.build_recipe(model=ref, prompt=PROMPT, steps=20, seed=3,
                                     init_image=source.ref, strength=strength)
        return engine.generate(recipe, pipeline=demo_pipeline, inputs=inputs,
                               preview=None).images[0]

    with torch.no_grad():
        latents = demo_pipeline.vae.encode(
            demo_pipeline.image_processor.preprocess(first.image)).latent_dist.mode()
        round_trip = demo_pipeline.image_processor.postprocess(
            demo_pipeline.vae.decode(latents).sample, output_type="pil")[0]
    kept = run(first, 0.05)
    assert distance(kept, round_trip) < 0.25 * distance(round_trip, first.image)
    ignored_first, ignored_second = run(first, 1.0), run(second, 1.0)
    assert distance(ignored_first, first.image) > 2 * distance(round_trip, first.image)
    assert distance(ignored_first, ignored_second) < 0.5 * distance(first.image, second.image)
