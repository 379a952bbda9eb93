"""Inpainting (generation/engine/image_runs.py): with ``paste_back`` false, the pixels of stock
diffusers' StableDiffusionInpaintPipeline given the same modules, scheduler, image, blurred
mask, strength and CPU generators, on 4-channel models and natively on 9-channel inpainting
ones; with it true, that output composited over the init image by the blurred mask."""

import numpy as np
import pytest
import torch
from diffusers import (
    StableDiffusionInpaintPipeline,
    StableDiffusionXLInpaintPipeline,
    UNet2DConditionModel,
)
from PIL import Image, ImageFilter

from generation import engine

from .conftest import (
    DEMO_WEIGHTS,
    assert_same_pixels,
    corner_mask,
    cpu_generators,
    family_components,
    inputs_of,
    picture,
    stock_view,
    stored_image,
    stored_mask,
)


def stock_inpaint(pipeline, recipe: engine.Recipe, image, mask) -> list[Image.Image]:
    cls = (StableDiffusionXLInpaintPipeline if recipe.model.family == "sdxl"
           else StableDiffusionInpaintPipeline)
    return stock_view(cls, pipeline, recipe)(
        recipe.prompt,
        image=image,
        mask_image=mask,
        height=recipe.height,
        width=recipe.width,
        strength=recipe.strength,
        negative_prompt=recipe.negative_prompt or None,
        num_inference_steps=recipe.steps,
        guidance_scale=recipe.guidance_scale,
        num_images_per_prompt=recipe.batch_size,
        generator=cpu_generators(recipe.seed, recipe.batch_size),
    ).images


def blurred(mask: Image.Image, radius: int) -> Image.Image:
    return mask.filter(ImageFilter.GaussianBlur(radius=radius)) if radius else mask


@pytest.mark.parametrize(("sampler", "strength", "blur"),
                         [("DDIM", 0.75, 0), ("Euler a", 1.0, 3)])
def test_inpainting_without_paste_back_matches_the_stock_pipeline(
    sampler, strength, blur, make_recipe, tiny_pipeline
):
    image, mask = stored_image(picture()), stored_mask(corner_mask())
    recipe = make_recipe(init_image=image.ref, mask=mask.ref, strength=strength, mask_blur=blur,
                         paste_back=False, sampler=sampler, batch_size=2, guidance_scale=4.0)
    ours = engine.generate(recipe, pipeline=tiny_pipeline, inputs=inputs_of(image, mask))
    theirs = stock_inpaint(tiny_pipeline, ours.recipes[0], image.image, blurred(mask.image, blur))
    assert_same_pixels(ours.images, theirs)


def test_paste_back_composites_the_stock_output_over_the_init_image(make_recipe, tiny_pipeline):
    image, mask = stored_image(picture()), stored_mask(corner_mask())
    recipe = make_recipe(init_image=image.ref, mask=mask.ref, strength=0.75, mask_blur=2)
    assert recipe.paste_back  # A1111's default
    ours = engine.generate(recipe, pipeline=tiny_pipeline, inputs=inputs_of(image, mask),
                           preview=None)
    alpha = blurred(mask.image, 2)
    theirs = stock_inpaint(tiny_pipeline, ours.recipes[0], image.image, alpha)
    assert_same_pixels(ours.images, [Image.composite(t, image.image, alpha) for t in theirs])
    far = np.asarray(alpha) == 0
    assert np.array_equal(np.asarray(ours.images[0])[far], np.asarray(image.image)[far])
    assert not np.array_equal(np.asarray(ours.images[0]), np.asarray(theirs[0]))


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_inpainting_matches_stock_on_sd2_and_sdxl(family, family_models, family_pipeline):
    pipeline = family_pipeline(family)
    image, mask = stored_image(picture(64, 64)), stored_mask(corner_mask(64, 64))
    ref = engine.ModelRef(name=family, source=family_models[family].folder)
    recipe = engine.build_recipe(model=ref, prompt="a red circle", steps=4, seed=5,
                                 init_image=image.ref, mask=mask.ref, strength=0.75,
                                 paste_back=False)
    ours = engine.generate(recipe, pipeline=pipeline, inputs=inputs_of(image, mask),
                           preview=None)
    assert_same_pixels(ours.images, stock_inpaint(pipeline, ours.recipes[0], image.image,
                                                  mask.image))


@pytest.fixture(scope="module")
def inpainting(tiny_inpainting_model):
    ref = engine.ModelRef(name="tiny-inpainting", source=tiny_inpainting_model)
    return ref, engine.load_pipeline(tiny_inpainting_model, device="cpu", dtype=torch.float32)


def test_a_9_channel_inpainting_model_inpaints_natively_as_stock(inpainting):
    ref, pipeline = inpainting
    assert engine.load_spec(ref.source).inpainting and pipeline.unet.config.in_channels == 9
    image, mask = stored_image(picture()), stored_mask(corner_mask())
    recipe = engine.build_recipe(model=ref, prompt="a red circle", steps=4, seed=2,
                                 width=32, height=32, init_image=image.ref, mask=mask.ref,
                                 strength=1.0, paste_back=False, batch_size=2)
    seen = []
    ours = engine.generate(recipe, pipeline=pipeline, inputs=inputs_of(image, mask),
                           on_step=lambda step, total, preview, _: seen.append(preview.render()))
    assert len(seen) == 4 and all(seen)
    assert_same_pixels(ours.images, stock_inpaint(pipeline, ours.recipes[0], image.image,
                                                  mask.image))


@pytest.mark.slow
def test_a_9_channel_sdxl_inpainting_model_inpaints_natively_as_stock(tmp_path):
    components = family_components("sdxl")
    torch.manual_seed(0)
    components["unet"] = UNet2DConditionModel.from_config(
        {**components["unet"].config, "in_channels": 9})
    StableDiffusionXLInpaintPipeline(**components).save_pretrained(tmp_path,
                                                                   safe_serialization=True)
    ref = engine.ModelRef(name="xl-inpainting", source=str(tmp_path))
    pipeline = engine.load_pipeline(ref.source, device="cpu", dtype=torch.float32)
    assert engine.load_spec(ref.source).family == "sdxl"
    image, mask = stored_image(picture(64, 64)), stored_mask(corner_mask(64, 64))
    recipe = engine.build_recipe(model=ref, prompt="a red circle", steps=3, seed=2,
                                 width=64, height=64, init_image=image.ref, mask=mask.ref,
                                 strength=0.8, paste_back=False)
    previews = []
    ours = engine.generate(recipe, pipeline=pipeline, inputs=inputs_of(image, mask),
                           preview=engine.Previews(vae_every=2),
                           on_step=lambda step, total, preview, _: previews.append(preview))
    assert [type(preview).__name__ for preview in previews] == [
        "LatentPreview", "DecodedPreview"]
    assert all(preview.render() for preview in previews)
    assert_same_pixels(ours.images, stock_inpaint(pipeline, ours.recipes[0], image.image,
                                                  mask.image))


def test_a_9_channel_inpainting_model_refuses_what_is_not_inpainting(inpainting):
    ref, _ = inpainting
    image = stored_image(picture())
    for fields in ({}, {"init_image": image.ref, "strength": 0.5}):
        with pytest.raises(engine.RecipeError) as caught:
            engine.build_recipe(model=ref, prompt="a", width=32, height=32, **fields)
        assert "inpainting model" in caught.value.errors["mask"]


def test_a_mask_of_another_size_than_the_image_is_refused_by_the_run(make_recipe, tiny_pipeline):
    image, mask = stored_image(picture()), stored_mask(corner_mask(40, 32))
    recipe = make_recipe(init_image=image.ref, mask=mask.ref, strength=0.5)
    with pytest.raises(engine.GenerationError, match="exactly the image's size"):
        engine.generate(recipe, pipeline=tiny_pipeline, inputs=inputs_of(image, mask))


def test_pixels_outside_the_mask_stay_within_the_vae_round_trip(demo_pipeline):
    """On the demo model, whose VAE was trained: without paste-back, what lies outside the
    mask, away from its edge, is the input's VAE round trip, within the noise of the VAE's
    sample; inside, the model repaints."""
    image, mask = stored_image(picture(64, 64)), stored_mask(corner_mask(64, 64))
    recipe = engine.build_recipe(
        model=engine.ModelRef(name="demo", source=str(DEMO_WEIGHTS)), prompt="a red circle",
        steps=20, seed=1, init_image=image.ref, mask=mask.ref, strength=0.9, paste_back=False)
    out = np.asarray(engine.generate(recipe, pipeline=demo_pipeline, preview=None,
                                     inputs=inputs_of(image, mask)).images[0], dtype=float)
    with torch.no_grad():
        latents = demo_pipeline.vae.encode(
            demo_pipeline.image_processor.preprocess(image.image)).latent_dist.mode()
        trip = demo_pipeline.image_processor.postprocess(
            demo_pipeline.vae.decode(latents).sample, output_type="pil")[0]
    trip, source = np.asarray(trip, dtype=float), np.asarray(image.image, dtype=float)
    far = np.asarray(mask.image.filter(ImageFilter.MaxFilter(17))) == 0
    inside = np.asarray(mask.image) == 255
    trip_error = np.abs(trip - source)[far].mean()
    assert np.abs(out - source)[far].mean() < trip_error + 2
    assert np.abs(out - trip)[far].mean() < 0.5 * trip_error
    assert np.abs(out - trip)[inside].mean() > 2 * np.abs(out - trip)[far].mean()
