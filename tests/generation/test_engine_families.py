"""Every family Studio runs (SD 1.x, SD 2.x with v-prediction, SDXL) keeps what the engine
promises: a stock diffusers pipeline's pixels, variation seeds, previews, cancel, recipes and
reproduce (docs/architecture.md §4). Tiny models: tests/generation/conftest.py."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from generation import engine
from generation.engine.models import pipeline_spec, run_view
from generation.engine.samplers import scheduler_from_ref
from generation.engine.seeds import generators, initial_noise

from .conftest import FAMILY_NAMES, stock_class

PROMPT = "a red circle"


@pytest.fixture
def family_recipe(family_models):
    """A validated recipe for a family's tiny model (its folder unless told): 32x32, 4 steps."""

    def make(family: str, source: str | None = None, **fields) -> engine.Recipe:
        source = source or family_models[family].folder
        model = engine.ModelRef(name=f"tiny-{family}", source=source)
        values = {"prompt": PROMPT, "steps": 4, "width": 32, "height": 32, "seed": 3}
        return engine.build_recipe(model=model, **{**values, **fields})

    return make


@pytest.fixture(scope="module")
def stock_pipelines(family_models) -> dict:
    """Each family's stock diffusers pipeline, loaded from the same folder."""
    pipelines = {}
    for family in FAMILY_NAMES:
        options = (
            {"add_watermarker": False} if family == "sdxl"
            else {"safety_checker": None, "requires_safety_checker": False}
        )
        pipe = stock_class(family).from_pretrained(
            family_models[family].folder, use_safetensors=True, **options
        )
        pipe.set_progress_bar_config(disable=True)
        pipelines[family] = pipe
    return pipelines


def stock_images(stock, recipe: engine.Recipe) -> list[Image.Image]:
    """The recipe run by a stock pipeline: its scheduler, one CPU generator per image, and
    with a variation seed the noise Studio blends, drawn from the same generators."""
    stock.scheduler = scheduler_from_ref(recipe.scheduler)
    image_generators = generators(recipe.seed, recipe.batch_size)
    latents = None
    if recipe.subseed_strength:
        size = (recipe.height // stock.vae_scale_factor, recipe.width // stock.vae_scale_factor)
        latents = initial_noise(
            (recipe.batch_size, 4, *size), image_generators, subseed=recipe.subseed,
            subseed_strength=recipe.subseed_strength, device=torch.device("cpu"),
            dtype=torch.float32,
        )
    return stock(
        recipe.prompt, negative_prompt=recipe.negative_prompt or None,
        num_images_per_prompt=recipe.batch_size, num_inference_steps=recipe.steps,
        guidance_scale=recipe.guidance_scale, height=recipe.height, width=recipe.width,
        generator=image_generators, latents=latents,
    ).images


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize(
    ("negative_prompt", "subseed_strength"), [("blue", 0.0), ("", 0.3)], ids=["plain", "variation"]
)
def test_each_family_matches_its_stock_pipeline_pixel_for_pixel(
    family, negative_prompt, subseed_strength, family_recipe, family_pipeline, stock_pipelines
):
    # An empty negative prompt reaches SDXL as None, so its zeroed embeddings apply as stock.
    recipe = family_recipe(
        family, sampler="Euler a", batch_size=2, guidance_scale=4.0,
        negative_prompt=negative_prompt, subseed=11, subseed_strength=subseed_strength,
    )
    previews = []
    ours = engine.generate(  # previews on: they must not disturb it
        recipe, pipeline=family_pipeline(family), on_step=lambda *step: previews.append(step)
    )
    theirs = stock_images(stock_pipelines[family], recipe)
    for a, b in zip(ours.images, theirs, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert [(step, total) for step, total, *_ in previews] == [(s, 4) for s in range(1, 5)]
    with Image.open(io.BytesIO(previews[-1][2].render())) as picture:
        # Two images side by side at the latent resolution: 32 / 2 = 16 pixels.
        assert picture.format == "WEBP" and picture.size == (32, 16)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_each_family_reads_its_spec_from_its_configs(family, family_models, family_pipeline):
    spec = engine.load_spec(family_models[family].folder)
    assert spec.family == family and spec.native_size == 64
    assert spec.limits.max_prompt_tokens == 75 and spec.prompt_tokens("a photo of a cat") == 5
    loaded = pipeline_spec(family_pipeline(family))
    assert (loaded.family, loaded.native_size, loaded.limits) == (
        spec.family, spec.native_size, spec.limits
    )


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_the_vae_previews_decode_each_familys_latents(family, family_recipe, family_pipeline):
    previews = []
    engine.generate(
        family_recipe(family, steps=2), pipeline=family_pipeline(family),
        preview=engine.Previews(vae_every=2), on_step=lambda *step: previews.append(step[2]),
    )
    assert isinstance(previews[0], engine.LatentPreview)
    decoded = previews[1]
    assert isinstance(decoded, engine.DecodedPreview) and decoded.rgb.shape == (1, 3, 32, 32)
    assert np.isfinite(decoded.rgb).all()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_each_family_stops_within_one_step_when_canceled(family, family_recipe, family_pipeline):
    steps = []
    result = engine.generate(
        family_recipe(family, steps=6), pipeline=family_pipeline(family),
        on_step=lambda step, *_: steps.append(step), should_cancel=lambda: len(steps) >= 2,
    )
    assert result.canceled and result.images == [] and steps == [1, 2]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_each_family_reproduces_an_image_from_its_png(family, family_recipe, family_pipeline):
    pipe = family_pipeline(family)
    result = engine.generate(
        family_recipe(family, batch_size=2, sampler="DPM++ 2M SDE"), pipeline=pipe, preview=None
    )
    recipe, _ = engine.read_png(engine.png_with_recipe(result.images[1], result.recipes[1]))
    image, comparison = engine.reproduce(recipe, result.images[1], pipeline=pipe)
    assert comparison.verdict == "identical" and image.tobytes() == result.images[1].tobytes()


def test_a_run_keeps_the_shared_pipelines_class_and_sdxl_settings(family_pipeline):
    shared = family_pipeline("sdxl")
    view = run_view(shared, shared.scheduler)
    assert type(view) is engine.StudioXLPipeline and view.watermark is None
    assert view.config.force_zeros_for_empty_prompt == shared.config.force_zeros_for_empty_prompt
    assert view.unet is shared.unet and view.text_encoder_2 is shared.text_encoder_2


def test_sdxl_in_half_precision_decodes_as_the_stock_pipeline_does(
    family_models, family_recipe
):
    """The SDXL pipeline decodes a ``force_upcast`` VAE in float32 when the model runs in
    float16 (it overflows there), and casts it back: so does the engine."""
    folder = family_models["sdxl"].folder
    pipe = engine.load_pipeline(folder, device="cpu", dtype=torch.float16)
    assert pipe.vae.config.force_upcast
    ours = engine.generate(family_recipe("sdxl", steps=1), pipeline=pipe, preview=None)
    assert ours.recipes[0].dtype == "float16" and pipe.vae.dtype == torch.float16
    stock = stock_class("sdxl").from_pretrained(
        folder, use_safetensors=True, add_watermarker=False, dtype=torch.float16
    )
    stock.set_progress_bar_config(disable=True)
    [theirs] = stock_images(stock, ours.recipes[0])
    assert np.array_equal(np.asarray(ours.images[0]), np.asarray(theirs))
