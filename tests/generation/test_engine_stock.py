"""The engine's pixels are a stock StableDiffusionPipeline's, given the same components,
scheduler config and generator list (docs/architecture.md §4)."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from generation import engine
from generation.engine.samplers import scheduler_from_ref


@pytest.mark.parametrize("sampler", ["DDIM", "Euler a", "DPM++ SDE Karras", "DPM++ 2M SDE", "Heun"])
def test_the_engine_matches_a_stock_pipeline_pixel_for_pixel(
    sampler, make_recipe, tiny_pipeline, tiny_model
):
    recipe = make_recipe(
        sampler=sampler, batch_size=2, guidance_scale=4.0, negative_prompt="blue", seed=3
    )
    ours = engine.generate(recipe, pipeline=tiny_pipeline)  # previews on: they must not disturb it
    stock = StableDiffusionPipeline.from_pretrained(
        tiny_model, use_safetensors=True, safety_checker=None, requires_safety_checker=False
    )
    stock.scheduler = scheduler_from_ref(ours.recipes[0].scheduler)
    stock.set_progress_bar_config(disable=True)
    theirs = stock(
        "a red circle",
        negative_prompt="blue",
        num_images_per_prompt=2,
        num_inference_steps=4,
        guidance_scale=4.0,
        height=32,
        width=32,
        generator=[torch.Generator("cpu").manual_seed(3 + i) for i in range(2)],
    ).images
    for a, b in zip(ours.images, theirs, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
