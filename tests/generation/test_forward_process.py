"""The forward process of the /learn/ page in the engine (generation/engine/forward_process.py):
x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε in the model's latent space, in one step from the VAE's x₀, as
diffusers' own add_noise makes it; the door and the worker are in test_learn_forward.py."""

import io

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from generation import learn, learn_tasks
from generation.engine import forward_process as fp
from generation.engine.image_runs import decode

from .conftest import picture


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r over all values, the mean of each channel (an image's last axis; a flat
    array is one channel) taken out first."""
    axes = tuple(range(max(a.ndim - 1, 1)))
    a, b = a - a.mean(axis=axes), b - b.mean(axis=axes)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def latents(pipe, seed: int = 0):
    """x₀ of the test picture and the noise the engine draws for `seed`."""
    x0 = fp.encode(pipe, picture(), fp.pipeline_spec(pipe).native_size)
    noise = torch.randn(x0.shape, generator=torch.Generator("cpu").manual_seed(seed))
    return x0, noise


def test_x_t_is_what_diffusers_add_noise_makes_from_the_schedule(tiny_pipeline):
    x0, noise = latents(tiny_pipeline)
    alpha_bars = fp.scheduler_alpha_bars(tiny_pipeline)
    ddpm = DDPMScheduler.from_config(tiny_pipeline.scheduler.config)
    for t in (0, 1, 250, 500, 999):
        expected = ddpm.add_noise(x0, noise, torch.tensor([t]))
        torch.testing.assert_close(fp.noised(x0, noise, float(alpha_bars[t])), expected,
                                   atol=1e-5, rtol=1e-5)


def test_the_schedule_is_the_models_own(tiny_pipeline):
    from generation.engine import load_spec

    config = load_spec(tiny_pipeline.name_or_path).scheduler_config
    ours = learn.model_schedule("tiny", config).alpha_bar
    np.testing.assert_allclose(fp.scheduler_alpha_bars(tiny_pipeline).numpy(), ours, atol=2e-6)


def test_at_the_last_timestep_x_t_is_nearly_all_noise(tiny_pipeline):
    x0, noise = latents(tiny_pipeline)
    last = float(fp.scheduler_alpha_bars(tiny_pipeline)[-1])
    x_t = fp.noised(x0, noise, last).numpy().ravel()
    assert abs(correlation(x_t, x0.numpy().ravel())) < 0.05
    assert correlation(x_t, noise.numpy().ravel()) > 0.999


def test_at_t_0_the_frame_is_the_vae_round_trip_of_the_picture(tiny_pipeline):
    frames = fp.forward_frames(tiny_pipeline, picture(), timesteps=[0, 999], seed=3)
    with torch.no_grad():
        round_trip = decode(tiny_pipeline, fp.encode(tiny_pipeline, picture(), frames.size))[0]
    first, last = (np.abs(pixels(image) - pixels(round_trip)).mean() for image in frames.images)
    assert first < 3  # levels of 255: ᾱ_0 leaves 0.6% of ε's scale
    assert first < last / 5


def test_the_same_seed_gives_the_same_frames_and_another_seed_others(tiny_pipeline):
    def frames(seed: int) -> list[bytes]:
        run = fp.forward_frames(tiny_pipeline, picture(), timesteps=[0, 500, 999], seed=seed)
        return [image.tobytes() for image in run.images]

    first = frames(7)
    assert frames(7) == first
    other = frames(8)
    assert other[1:] != first[1:]


def test_the_picture_is_cropped_to_a_square_of_the_models_native_size(tiny_pipeline):
    done = []
    frames = fp.forward_frames(tiny_pipeline, picture(48, 20), timesteps=[0, 999], seed=0,
                                on_frame=lambda k, total: done.append((k, total)))
    assert frames.size == fp.pipeline_spec(tiny_pipeline).native_size == 32
    assert [image.size for image in frames.images] == [(32, 32)] * 2
    assert frames.timesteps == [0, 999] and frames.train_steps == 1000
    assert frames.alpha_bars[0] > 0.99 > 1e-3 > frames.alpha_bars[1]
    assert done == [(1, 2), (2, 2)]


def test_a_timestep_outside_the_schedule_is_refused(tiny_pipeline):
    with pytest.raises(ValueError, match="outside 0 … 999"):
        fp.forward_frames(tiny_pipeline, picture(), timesteps=[0, 1000], seed=0)


def test_frames_are_sent_as_small_webp_data_urls():
    url = fp.frame_data_url(Image.new("RGB", (512, 300), "red"))
    image = Image.open(io.BytesIO(__import__("base64").b64decode(url.split(",", 1)[1])))
    assert url.startswith("data:image/webp;base64,")
    assert (image.format, image.size) == ("WEBP", (256, 150))


def test_the_demo_models_circle_dissolves_into_noise(demo_pipeline):
    circle = learn_tasks._picture(0, learn_tasks.Source("demo"))
    frames = fp.forward_frames(demo_pipeline, circle, timesteps=[0, 500, 999], seed=0)
    start, middle, end = (correlation(pixels(i), pixels(circle)) for i in frames.images)
    assert start > 0.95
    assert abs(end) < 0.3
    assert start > middle > end


def test_the_panel_computes_46_frames_with_the_strip_of_ten_among_them():
    frames, strip = learn.forward_timesteps(1000)
    assert len(frames) == 46 and frames[0] == 0 and frames[-1] == 999
    assert [frames[k] for k in strip] == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    short, strip = learn.forward_timesteps(12)
    assert short == list(range(12)) and len(strip) == 10
