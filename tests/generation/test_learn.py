"""The /learn/ page's maths and its door: schedules from scheduler configs as diffusers builds
them, the textbook linear and cosine formulas, the fraction below 10% noise, and who may see
the page."""

import json
import math
import shutil

import numpy as np
import pytest
from django.urls import reverse

from generation import learn, learn_charts
from generation.engine import load_spec

from .conftest import DEMO_WEIGHTS

SD_CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
             "beta_schedule": "scaled_linear"}


@pytest.fixture
def sd_schedule(settings, tiny_model, tmp_path) -> str:
    """The tiny model with Stable Diffusion's scaled-linear schedule, registered as
    "sd-schedule": a second model whose chart differs from the demo model's."""
    folder = tmp_path / "sd-schedule"
    shutil.copytree(tiny_model, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, **SD_CONFIG}))
    settings.STUDIO_MODELS = {**settings.STUDIO_MODELS, "sd-schedule": str(folder)}
    return "sd-schedule"


def diffusers_alpha_bar(config: dict) -> np.ndarray:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(config).alphas_cumprod.double().numpy()


@pytest.mark.parametrize("config", [
    SD_CONFIG,
    {**SD_CONFIG, "rescale_betas_zero_snr": True},
    {"beta_schedule": "linear"},
    {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 500},
    {"beta_schedule": "sigmoid", "beta_start": 0.0001, "beta_end": 0.02},
    {"trained_betas": list(np.linspace(0.001, 0.02, 100)), "num_train_timesteps": 100},
], ids=["scaled_linear", "zero_snr", "linear", "cosine_cap", "sigmoid", "trained"])
def test_a_schedule_is_what_diffusers_builds_from_the_config(config):
    ours = learn.model_schedule("m", config).alpha_bar
    np.testing.assert_allclose(ours, diffusers_alpha_bar(config), atol=2e-6)


def test_the_demo_models_schedule_reaches_pure_noise():
    config = load_spec(str(DEMO_WEIGHTS)).scheduler_config
    schedule = learn.model_schedule("studio-demo", config)
    assert schedule.steps == 1000
    assert schedule.alpha_bar[-1] < 1e-8  # docs/demo_model.md: 2.4e-9 at t = 999


@pytest.mark.parametrize("config", [SD_CONFIG, {**SD_CONFIG, "rescale_betas_zero_snr": True},
                                    {"beta_schedule": "squaredcos_cap_v2"}])
def test_alpha_bar_falls_monotonically_from_near_one(config):
    alpha_bar = learn.model_schedule("m", config).alpha_bar
    assert np.all(np.diff(alpha_bar) < 0)
    assert 0.99 < alpha_bar[0] <= 1
    assert alpha_bar[-1] >= 0


def test_zero_terminal_snr_ends_at_zero_and_keeps_the_first_step():
    plain = learn.model_schedule("m", SD_CONFIG).alpha_bar
    rescaled = learn.model_schedule("m", {**SD_CONFIG, "rescale_betas_zero_snr": True})
    assert rescaled.alpha_bar[-1] == pytest.approx(0, abs=1e-12)
    assert rescaled.snr[-1] == 0
    assert rescaled.alpha_bar[0] == pytest.approx(plain[0])


def test_the_textbook_schedules_follow_their_formulas():
    steps = 1000
    linear, cosine = learn.linear_schedule(steps), learn.cosine_schedule(steps)
    for t in (0, 1, 250, 500, 999):
        assert linear.alpha_bar[t] == pytest.approx(1 - t / steps)
        assert cosine.alpha_bar[t] == pytest.approx(math.cos(t / steps * math.pi / 2) ** 2)
    assert linear.snr[500] == pytest.approx(1.0)
    assert math.isinf(linear.snr[0])


def test_the_fraction_below_ten_percent_noise_counts_timesteps_with_one_minus_alpha_bar_under_it():
    # Linear: 1 − ᾱ = t/T < 0.1 for t < 100. Cosine: cos²(πx/2) > 0.9 for x < 2/π·acos(√0.9).
    assert learn.linear_schedule(1000).fraction_quiet == pytest.approx(0.100)
    edge = 2 / math.pi * math.acos(math.sqrt(0.9))
    assert learn.cosine_schedule(1000).fraction_quiet == pytest.approx(edge, abs=1e-3)
    assert learn.Schedule("s", np.array([1.0, 0.95, 0.9, 0.5])).fraction_quiet == 0.5


def test_an_unknown_beta_schedule_is_refused():
    with pytest.raises(ValueError, match="beta_schedule"):
        learn.betas_from_config({"beta_schedule": "made_up"})


def test_the_charts_mark_where_each_schedule_reaches_ten_percent_noise():
    schedules = learn.schedules_for("m", SD_CONFIG)
    chart = learn_charts.alpha_bar_chart(schedules)
    assert [line["name"] for line in chart["lines"]] == ["m", "linear", "cosine"]
    assert [mark["t"] for mark in chart["quiet"]][1] == 100
    assert all(band["title"].startswith("t = ") for band in chart["bands"])
    snr = learn_charts.snr_chart(schedules)
    assert snr["y_ticks"][0].label == "10" and snr["y_ticks"][0].power


def test_the_demo_tables_come_from_the_evaluation_file():
    from generation.learn_views import DEMO_EVAL

    tables = learn.demo_tables(DEMO_EVAL)
    assert [row["guidance"] for row in tables["guidance"]] == ["1", "3", "5", "7.5"]
    assert {(row["sampler"], row["steps"]) for row in tables["samplers"]} == {
        (s, str(n)) for s in learn.GRID_SAMPLERS for n in learn.GRID_STEPS
    }
    assert learn.demo_tables(DEMO_EVAL.with_name("missing.json")) is None


@pytest.mark.django_db
def test_the_page_needs_a_login(client):
    response = client.get(reverse("learn"))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


@pytest.mark.django_db
def test_the_page_draws_the_chosen_models_schedule(client, alice, sd_schedule):
    client.force_login(alice)
    demo = client.get(reverse("learn")).content.decode()
    assert "squaredcos_cap_v2" in demo and "<polyline" in demo
    other = client.get(reverse("learn"), {"model": sd_schedule}).content.decode()
    assert "scaled_linear" in other and "squaredcos_cap_v2" not in other
    unknown = client.get(reverse("learn"), {"model": "nope"}).content.decode()
    assert "squaredcos_cap_v2" in unknown  # the default model's


@pytest.mark.django_db
def test_the_denoising_path_lists_only_the_users_own_images(client, alice, bob):
    from generation.learn_views import recent_images
    from generation.models import Job, Output

    job = Job.objects.create(owner=bob, recipe={"prompt": "p", "steps": 2}, status="succeeded")
    Output.objects.create(job=job, index=0, image="x.png", recipe={"prompt": "p", "steps": 2},
                          width=64, height=64, trajectory=[{"step": 1, "image": "data:,"}])
    assert recent_images(alice) == []
    assert len(recent_images(bob)) == 1
    client.force_login(alice)
    page = client.get(reverse("learn")).content.decode()
    assert 'id="path-empty"' in page
