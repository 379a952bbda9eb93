"""Per-step previews show the model's predicted clean latent, small and cheap."""

import io
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from generation import engine
from generation.engine.previews import (
    KNOWN_LATENT_RGB,
    LATENT_RGB_FILE,
    alpha_bar_at,
    latent_rgb_for,
    x0_from,
)
from generation.engine.samplers import make_scheduler

from .test_engine_samplers import COSINE_V


def predicted_x0(model_output, model_input, timestep, alphas_cumprod, prediction_type):
    """x0 at a timestep, as the engine computes it for a step's preview."""
    alpha_bar = alpha_bar_at(alphas_cumprod, timestep)
    return x0_from(model_output, model_input, alpha_bar, prediction_type)


def run_with_previews(recipe, pipeline, preview=None):
    preview = preview or engine.Previews()
    calls = []
    result = engine.generate(
        recipe, pipeline=pipeline, preview=preview, on_step=lambda *args: calls.append(args)
    )
    return result, calls


def test_the_callback_fires_every_step_with_a_small_webp(make_recipe, tiny_pipeline):
    result, calls = run_with_previews(make_recipe(steps=5, batch_size=2), tiny_pipeline)
    assert [(step, total) for step, total, _, _ in calls] == [(s, 5) for s in range(1, 6)]
    elapsed = [e for *_, e in calls]
    assert elapsed == sorted(elapsed)
    for _, _, preview, _ in calls:
        with Image.open(io.BytesIO(preview.render())) as image:
            # Two images side by side, each at the latent resolution: 32 / 4 = 8 pixels.
            assert image.format == "WEBP" and image.size == (16, 8)
    assert len(result.timings["steps"]) == 5


def test_second_order_samplers_report_each_step_once(make_recipe, tiny_pipeline):
    _, calls = run_with_previews(make_recipe(sampler="Heun", steps=3), tiny_pipeline)
    assert [step for step, *_ in calls] == [1, 2, 3]


def test_the_last_preview_is_the_predicted_clean_image(make_recipe, tiny_pipeline):
    # DDIM's last step lands on x0 itself, so decoding the preview's x0 gives the final image;
    # a preview of the noisy latent would not.
    recipe = make_recipe(steps=3)
    result, calls = run_with_previews(
        recipe, tiny_pipeline, engine.Previews(vae_every=1, format="PNG")
    )
    with Image.open(io.BytesIO(calls[-1][2].render())) as preview:
        assert np.array_equal(np.asarray(preview), np.asarray(result.images[0]))


def test_a_preview_pickles_and_renders_the_same_picture_elsewhere(make_recipe, tiny_pipeline):
    # What lets Studio's worker draw previews in its sidecar process, not beside sampling.
    _, calls = run_with_previews(make_recipe(steps=2), tiny_pipeline)
    preview = calls[-1][2]
    copy = pickle.loads(pickle.dumps(preview))  # noqa: S301 (our own bytes)
    assert isinstance(copy, engine.LatentPreview) and copy.render() == preview.render()
    assert len(pickle.dumps(preview)) < 4096  # a few kilobytes a step, whatever the model


@pytest.mark.parametrize("sampler", ["DDIM", "Euler", "DPM++ 2M Karras"])
def test_x0_is_recovered_from_a_v_prediction_at_any_timestep(sampler):
    scheduler = make_scheduler(sampler, COSINE_V, seed=0)
    scheduler.set_timesteps(10)
    x0, noise = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    t = scheduler.timesteps[4]
    # What the UNet sees is the scheduler-scaled sample, in the training parameterisation.
    alpha_bar = torch.tensor(np.interp(float(t), np.arange(1000), scheduler.alphas_cumprod.numpy()))
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    v = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
    recovered = predicted_x0(v.float(), x_t.float(), t, scheduler.alphas_cumprod, "v_prediction")
    assert torch.allclose(recovered, x0, atol=1e-4)


def test_epsilon_and_sample_predictions_give_x0_too():
    alphas_cumprod = torch.linspace(0.99, 0.01, 1000)
    x0, noise = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    a = alphas_cumprod[300]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    assert torch.allclose(predicted_x0(noise, x_t, 300, alphas_cumprod, "epsilon"), x0, atol=1e-4)
    assert torch.equal(predicted_x0(x0, x_t, 300, alphas_cumprod, "sample"), x0)
    # With guidance the model input holds the unconditional and conditional copies.
    doubled = torch.cat([x_t, x_t])
    assert torch.allclose(
        predicted_x0(noise, doubled, 300, alphas_cumprod, "epsilon"), x0, atol=1e-4
    )


def test_a_fitted_projection_is_stored_next_to_the_model_and_reused(tiny_pipeline, tmp_path):
    fitted = latent_rgb_for(tiny_pipeline, tmp_path)
    stored = json.loads((tmp_path / LATENT_RGB_FILE).read_text())
    assert np.allclose(stored["weights"], fitted.weights) and len(stored["weights"]) == 4
    stored["bias"] = [0.25, 0.5, 0.75]
    (tmp_path / LATENT_RGB_FILE).write_text(json.dumps(stored))
    assert latent_rgb_for(tiny_pipeline, tmp_path).bias == (0.25, 0.5, 0.75)


def test_the_fit_renders_the_demo_vae_colours_far_better_than_their_mean(demo_pipeline):
    # A trained VAE: the tiny random one decodes everything to about the same grey.
    vae = demo_pipeline.vae
    projection = engine.fit_latent_rgb(demo_pipeline)
    generator = torch.Generator().manual_seed(1)
    images = torch.nn.functional.interpolate(
        torch.rand(8, 3, 3, 3, generator=generator) * 2 - 1, size=(64, 64)
    )
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
        decoded = vae.decode(latents / vae.config.scaling_factor).sample
    target = torch.nn.functional.avg_pool2d(decoded, demo_pipeline.vae_scale_factor)
    error = (torch.from_numpy(projection.project(latents.numpy())) - target).pow(2).mean()
    baseline = (target - target.mean(dim=(0, 2, 3), keepdim=True)).pow(2).mean()
    assert error < 0.5 * baseline


def test_sd_vaes_use_the_known_factors():
    assert KNOWN_LATENT_RGB[0.18215].weights[3] == (-0.2120, -0.2616, -0.7177)
    assert KNOWN_LATENT_RGB[0.13025].bias == (0.1084, -0.0175, -0.0011)
