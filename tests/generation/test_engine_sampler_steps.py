"""Every sampler draws an image, not noise, at 10 steps with guidance, on the demo model (in
float32 and in bfloat16, as a GPU runs it), on the tiny test model, and on tiny SD 2.x
(v-prediction) and SDXL models (docs/engine.md, "Second-order samplers on a zero-terminal-SNR
schedule").

Each run is the stock pipeline with the scheduler ``make_scheduler`` builds and the engine's
generators; ``test_engine_stock.py`` shows the engine's images are that pipeline's. The measure
is the final latents' standard deviation over that of DDIM at 50 steps from the same noise:
the defect multiplied the latents' scale by 4 (tiny model, DPM2 a) to 330 (demo model in
bfloat16, Heun), while every working sampler stays within 0.7 and 2.2 of the reference.
"""

import pytest
import torch

from generation import engine
from generation.demo_model.architecture import sampling_scheduler
from generation.engine.recipe import SchedulerRef
from generation.engine.samplers import SECOND_ORDER_IN_SIGMA, scheduler_from_ref, scheduler_ref
from generation.engine.schedules import check_scheduler
from generation.engine.seeds import generators

from .conftest import DEMO_WEIGHTS, stock_class

STEPS = 10
GUIDANCE = 3.0
REFERENCE_SAMPLER, REFERENCE_STEPS = "DDIM", 50
# Latents' std over the reference's: the defect measured 4 to 330, working samplers 0.7 to 2.2.
MAX_SCALE = 3.0

DEMO_CASES = [("a red circle on a blue background", 1), ("a green square on a white background", 2)]
TINY_CASES = [("a red circle", 1), ("a blue square", 2)]

_references: dict[tuple, torch.Tensor] = {}


def final_latents(pipeline, sampler: str, prompt: str, seed: int, steps: int) -> torch.Tensor:
    scheduler = engine.make_scheduler(sampler, dict(pipeline.scheduler.config), seed)
    family = "sdxl" if isinstance(pipeline, engine.StudioXLPipeline) else "sd1"
    components = {**pipeline.components, "scheduler": scheduler}
    if family == "sd1":
        components["requires_safety_checker"] = False
    view = stock_class(family)(**components)
    view.set_progress_bar_config(disable=True)
    size = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
    return view(
        prompt,
        num_inference_steps=steps,
        guidance_scale=GUIDANCE,
        generator=generators(seed, 1),
        height=size,
        width=size,
        output_type="latent",
    ).images.float()


def assert_denoised(pipeline, sampler: str, cases: list[tuple[str, int]]) -> None:
    for prompt, seed in cases:
        key = (id(pipeline), prompt, seed)
        if key not in _references:
            _references[key] = final_latents(
                pipeline, REFERENCE_SAMPLER, prompt, seed, REFERENCE_STEPS
            )
        latents = final_latents(pipeline, sampler, prompt, seed, STEPS)
        assert torch.isfinite(latents).all(), f"{sampler}: non-finite latents for {prompt!r}"
        scale = (latents.std() / _references[key].std()).item()
        assert 1 / MAX_SCALE < scale < MAX_SCALE, (
            f"{sampler} at {STEPS} steps, guidance {GUIDANCE}: latents {scale:.1f} times the "
            f"scale of {REFERENCE_SAMPLER} at {REFERENCE_STEPS} steps for {prompt!r}, seed {seed}"
        )


@pytest.fixture(scope="module")
def demo_pipeline_bf16():
    if not (DEMO_WEIGHTS / "model_index.json").is_file():
        pytest.skip("the demo model's weights are not in generation/demo_model/weights yet")
    return engine.load_pipeline(str(DEMO_WEIGHTS), device="cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("sampler", list(engine.SAMPLERS))
def test_every_sampler_denoises_the_tiny_model_at_10_steps(sampler, tiny_pipeline):
    assert_denoised(tiny_pipeline, sampler, TINY_CASES)


@pytest.mark.parametrize("sampler", list(engine.SAMPLERS))
def test_every_sampler_denoises_the_demo_model_at_10_steps(sampler, demo_pipeline):
    assert_denoised(demo_pipeline, sampler, DEMO_CASES)


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_every_sampler_denoises_sd2_and_sdxl_models_at_10_steps(family, family_pipeline):
    pipeline = family_pipeline(family)
    for sampler in engine.SAMPLERS:
        assert_denoised(pipeline, sampler, TINY_CASES[:1])


@pytest.mark.slow
@pytest.mark.parametrize("sampler", list(engine.SAMPLERS))
def test_every_sampler_denoises_the_demo_model_at_10_steps_in_bfloat16(
    sampler, demo_pipeline_bf16
):
    # Heun, DPM2 and DPM2 a step in the model's dtype: on a GPU, DPM2 drew noise only here.
    assert_denoised(demo_pipeline_bf16, sampler, DEMO_CASES[:1])


def test_second_order_samplers_start_below_the_top_of_a_zero_snr_schedule_only():
    demo = dict(sampling_scheduler().config)  # the demo model's, as saved with it
    sd = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
          "prediction_type": "epsilon", "timestep_spacing": "trailing"}
    for name, (class_name, _) in engine.SAMPLERS.items():
        spacing = engine.make_scheduler(name, demo, seed=0).config.get("timestep_spacing")
        if class_name in SECOND_ORDER_IN_SIGMA:
            assert spacing == "leading", name
            assert engine.make_scheduler(name, sd, seed=0).config.timestep_spacing == "trailing"
        elif spacing is not None:
            assert spacing == "trailing", name


@pytest.mark.parametrize("sampler", ["Heun", "DPM2", "DPM2 a"])
def test_a_recipe_recorded_before_the_fix_is_accepted_and_steps_as_recorded(sampler):
    # Before, these samplers resolved to the model's trailing spacing; timestep_spacing is one
    # of the settings a recipe may choose (schedules.TUNABLE), so such a recipe still runs, and
    # runs as it did.
    demo = dict(sampling_scheduler().config)  # the demo model's, as saved with it
    now = scheduler_ref(engine.make_scheduler(sampler, demo, seed=5))
    assert now.config["timestep_spacing"] == "leading"
    recorded = SchedulerRef(now.class_name, {**now.config, "timestep_spacing": "trailing"})
    assert check_scheduler(recorded, sampler, demo, seed=5) == {}
    scheduler = scheduler_from_ref(recorded)
    scheduler.set_timesteps(STEPS)
    assert scheduler.timesteps[0].item() == 999
