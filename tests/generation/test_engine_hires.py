"""The hires fix (generation/engine/image_runs.py): text to image at the base size, upscaled
(latents by torch's interpolate, or pixels by PIL), then stock img2img at the hires size with
fresh CPU generators: the pixels of those stock pipelines run one after the other."""

import pytest
import torch
from diffusers import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)
from PIL import Image

from generation import engine

from .conftest import assert_same_pixels, cpu_generators, stock_view

STOCK = {
    "sd": (StableDiffusionPipeline, StableDiffusionImg2ImgPipeline),
    "sdxl": (StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline),
}


def stock_hires(pipeline, recipe: engine.Recipe) -> list[Image.Image]:
    """What a script would run: stock text to image, the upscale, stock img2img."""
    text_cls, image_cls = STOCK["sdxl" if recipe.model.family == "sdxl" else "sd"]
    hires = recipe.hires
    common = {
        "prompt": recipe.prompt,
        "negative_prompt": recipe.negative_prompt or None,
        "guidance_scale": recipe.guidance_scale,
        "num_images_per_prompt": recipe.batch_size,
    }
    latent = hires.upscaler.startswith("Latent")
    base = stock_view(text_cls, pipeline, recipe)(
        **common, height=recipe.height, width=recipe.width, num_inference_steps=recipe.steps,
        generator=cpu_generators(recipe.seed, recipe.batch_size),
        output_type="latent" if latent else "pil",
    ).images
    width = int(recipe.width * hires.scale) // 8 * 8
    height = int(recipe.height * hires.scale) // 8 * 8
    if latent:
        scale = pipeline.vae_scale_factor
        mode = {"Latent": "bilinear", "Latent (nearest-exact)": "nearest-exact"}[hires.upscaler]
        image = torch.nn.functional.interpolate(base, size=(height // scale, width // scale),
                                                mode=mode)
    else:
        image = [picture.resize((width, height), Image.Resampling.LANCZOS) for picture in base]
    return stock_view(image_cls, pipeline, recipe)(
        **common, image=image, strength=hires.strength,
        num_inference_steps=hires.steps or recipe.steps,
        generator=cpu_generators(recipe.seed, recipe.batch_size),
    ).images


@pytest.mark.parametrize(("upscaler", "sampler"),
                         [("Latent", "Euler a"), ("Latent (nearest-exact)", "DDIM"),
                          ("Lanczos", "DPM++ 2M")])
def test_the_hires_fix_matches_stock_pipelines_pixel_for_pixel(
    upscaler, sampler, make_recipe, tiny_pipeline
):
    hires = engine.Hires(scale=1.5, steps=3, strength=0.7, upscaler=upscaler)
    recipe = make_recipe(hires=hires, sampler=sampler, batch_size=2, guidance_scale=4.0)
    ours = engine.generate(recipe, pipeline=tiny_pipeline)
    assert ours.images[0].size == (48, 48)
    assert ours.recipes[0].hires == hires
    assert_same_pixels(ours.images, stock_hires(tiny_pipeline, ours.recipes[0]))


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_the_hires_fix_matches_stock_on_sd2_and_sdxl(
    family, upscaler, family_models, family_pipeline
):
    pipeline = family_pipeline(family)
    ref = engine.ModelRef(name=family, source=family_models[family].folder)
    recipe = engine.build_recipe(model=ref, prompt="a red circle", steps=3, seed=5, width=64,
                                 height=64, hires=engine.Hires(scale=1.5, upscaler=upscaler))
    ours = engine.generate(recipe, pipeline=pipeline, preview=None)
    assert ours.images[0].size == (96, 96)
    assert_same_pixels(ours.images, stock_hires(pipeline, ours.recipes[0]))


@pytest.mark.parametrize("sampler", ["DDIM", "Heun"])
def test_on_step_counts_both_passes_each_with_a_preview(sampler, make_recipe, tiny_pipeline):
    recipe = make_recipe(sampler=sampler, hires=engine.Hires(scale=2, steps=5, strength=0.6))
    total = engine.steps_run(recipe)
    assert total == 4 + 3
    seen = []
    engine.generate(recipe, pipeline=tiny_pipeline, preview=engine.Previews(vae_every=3),
                    on_step=lambda step, total, preview, _: seen.append((step, total, preview)))
    assert [(step, total) for step, total, _ in seen] == [(i, 7) for i in range(1, 8)]
    assert [type(preview).__name__ for _, _, preview in seen] == [
        "LatentPreview", "LatentPreview", "DecodedPreview", "LatentPreview", "LatentPreview",
        "DecodedPreview", "LatentPreview"]
    assert all(preview.render() for _, _, preview in seen)


def test_cancel_in_the_second_pass_stops_the_run(make_recipe, tiny_pipeline):
    recipe = make_recipe(hires=engine.Hires(scale=2, steps=4, strength=1.0))
    steps = []
    result = engine.generate(recipe, pipeline=tiny_pipeline,
                             on_step=lambda step, *_: steps.append(step),
                             should_cancel=lambda: len(steps) >= 6)
    assert result.canceled and result.images == [] and steps == [1, 2, 3, 4, 5, 6]


def test_a_hires_recipe_reproduces_identically(make_recipe, tiny_pipeline):
    recipe = make_recipe(hires=engine.Hires(scale=1.5, upscaler="Lanczos"), sampler="Euler a")
    result = engine.generate(recipe, pipeline=tiny_pipeline, preview=None)
    stored = engine.Recipe.from_json(result.recipes[0].to_json())
    _, comparison = engine.reproduce(stored, result.images[0], pipeline=tiny_pipeline)
    assert comparison.verdict == engine.IDENTICAL
