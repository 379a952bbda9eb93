"""Every sampler builds from the model's own schedule and runs on every shipped model."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from generation import engine
from generation.demo_model.architecture import sampling_scheduler
from generation.engine.samplers import TERMINAL_ALPHA_BAR, make_scheduler, shortest_float32

from .conftest import DEMO_WEIGHTS

# The demo model's schedule: zero terminal SNR, where sigma-stepping schedulers break.
COSINE_V = dict(sampling_scheduler().config)
DATA_MEAN, DATA_STD = 0.5, 0.5


def ideal_v(x_t: torch.Tensor, t: float, training_alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The exact v-prediction for data ~ N(DATA_MEAN, DATA_STD^2) at (fractional) timestep t:
    a perfect model, so a sampler's output statistics test the sampler alone."""
    log_sigmas = 0.5 * torch.log((1 - training_alphas_cumprod) / training_alphas_cumprod)
    log_sigma = np.interp(t, np.arange(len(log_sigmas)), log_sigmas.numpy())
    alpha_bar = 1 / (1 + np.exp(2 * log_sigma))
    a, s = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
    var = DATA_STD**2
    x = x_t.double()
    x0 = DATA_MEAN + a * var / (a * a * var + s * s) * (x - a * DATA_MEAN)
    eps = (x - a * x0) / s
    return (a * eps - s * x0).float()


def sample_with(scheduler, steps: int) -> torch.Tensor:
    """The loop StableDiffusionPipeline runs, around the ideal model."""
    training = torch.cumprod(1 - DDIMScheduler.from_config(COSINE_V).betas, 0)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 4, 8, 8, generator=generator) * scheduler.init_noise_sigma
    kwargs = {"generator": generator} if "generator" in scheduler.step.__code__.co_varnames else {}
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        x = scheduler.step(
            ideal_v(model_input, float(t), training), t, x, **kwargs, return_dict=False
        )[0]
    return x


@pytest.mark.parametrize("name", list(engine.SAMPLERS))
def test_every_sampler_samples_the_zero_snr_schedule_correctly(name):
    x = sample_with(make_scheduler(name, COSINE_V, seed=0, batch_size=4), steps=20)
    assert torch.isfinite(x).all()
    assert abs(x.mean().item() - DATA_MEAN) < 0.05
    assert abs(x.std().item() - DATA_STD) < 0.15


def test_the_terminal_alpha_bar_is_floored_in_explicit_betas():
    config = make_scheduler("Euler", COSINE_V, seed=0).config
    alphas_cumprod = torch.cumprod(1 - torch.tensor(config["trained_betas"]), 0)
    assert alphas_cumprod[-1].item() == pytest.approx(TERMINAL_ALPHA_BAR, rel=1e-3)
    # Everything before the last step is the model's training schedule, bit for bit.
    training = DDIMScheduler.from_config(COSINE_V).alphas_cumprod
    assert torch.equal(alphas_cumprod[:-1], training[:-1])
    assert config["rescale_betas_zero_snr"] is False


def test_explicit_betas_are_written_short_and_read_back_bit_for_bit():
    # Every positive normal float32 magnitude, and the demo schedule's own betas.
    bits = np.random.default_rng(0).integers(0x00800000, 0x7F800000, 20_000, dtype=np.uint32)
    values = torch.from_numpy(bits.view(np.float32).copy())
    assert torch.equal(torch.tensor(shortest_float32(values), dtype=torch.float32), values)

    config = make_scheduler("Euler", COSINE_V, seed=0).config
    floored = torch.tensor(config["trained_betas"], dtype=torch.float32)
    # The recipe's JSON holds the short form (14 kB for the demo schedule, not 23 kB) ...
    long_betas = floored.tolist()
    assert len(json.dumps(config["trained_betas"])) < 0.65 * len(json.dumps(long_betas))
    # ... and every sampler builds the same schedule from it as from float64's digits.
    for name in engine.SAMPLERS:
        short = make_scheduler(name, {**COSINE_V, **config}, seed=0)
        long = make_scheduler(name, {**COSINE_V, **config, "trained_betas": long_betas}, seed=0)
        assert torch.equal(short.betas, long.betas), name
        assert torch.equal(short.alphas_cumprod, long.alphas_cumprod), name


def test_a_schedule_with_signal_left_at_the_end_is_not_touched():
    sd = dict(
        DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config
    )
    assert make_scheduler("DPM++ 2M Karras", sd, seed=0).config["trained_betas"] is None


def test_the_model_schedule_carries_over_and_the_sampler_decides_the_spacing():
    karras_model = dict(EulerDiscreteScheduler.from_config(COSINE_V, use_karras_sigmas=True).config)
    euler = make_scheduler("Euler", karras_model, seed=0)
    assert euler.config.use_karras_sigmas is False
    assert euler.config.prediction_type == "v_prediction"
    assert euler.config.timestep_spacing == "trailing"
    assert make_scheduler("LMS Karras", COSINE_V, seed=0).config.use_karras_sigmas is True


def test_the_sde_sampler_seeds_one_brownian_tree_per_image():
    scheduler = make_scheduler("DPM++ SDE Karras", COSINE_V, seed=41, batch_size=3)
    assert scheduler.config.noise_sampler_seed == [41, 42, 43]


@pytest.mark.parametrize("name", list(engine.SAMPLERS))
def test_every_sampler_makes_finite_images_of_the_right_size(name, make_recipe, tiny_pipeline):
    recipe = make_recipe(sampler=name, steps=3, width=40, height=32, guidance_scale=2.0)
    result = engine.generate(recipe, pipeline=tiny_pipeline, preview=None)
    assert [image.size for image in result.images] == [(40, 32)]
    assert result.recipes[0].scheduler.class_name == engine.SAMPLERS[name][0]
    assert np.isfinite(np.asarray(result.images[0], dtype=float)).all()


@pytest.mark.skipif(not DEMO_WEIGHTS.is_dir(), reason="the demo model's weights are not here yet")
@pytest.mark.parametrize("name", list(engine.SAMPLERS))
def test_every_sampler_runs_on_the_demo_model(name, demo_pipeline):
    ref = engine.ModelRef(name="studio-demo", source=str(DEMO_WEIGHTS))
    recipe = engine.build_recipe(
        model=ref, prompt="a red circle on a blue background", sampler=name, seed=3
    )
    result = engine.generate(recipe, pipeline=demo_pipeline, preview=None)
    pixels = np.asarray(result.images[0], dtype=float)
    assert result.images[0].size == (64, 64)
    assert pixels.std() > 10, "a flat image: the sampler did not denoise"


@pytest.mark.parametrize("name", ["DPM++ 2M Karras", "Euler", "DPM++ SDE Karras"])
def test_a_run_starts_at_the_first_step_even_when_the_first_timestep_repeats(name):
    # Karras spacing at zero terminal SNR puts several sigmas between the last two training
    # steps; whether their truncated timesteps repeat the first one depends on the CPU's
    # rounding. Where they do, a scheduler that looks its place up starts a step late.
    scheduler = make_scheduler(name, COSINE_V, seed=0)
    scheduler.set_timesteps(20)
    assert scheduler.begin_index == 0
    scheduler.timesteps[1] = scheduler.timesteps[0]
    x = torch.zeros(1, 4, 8, 8)
    for t in scheduler.timesteps:
        x = scheduler.step(torch.zeros_like(x), t, x, return_dict=False)[0]
    assert scheduler.step_index == len(scheduler.timesteps)
