"""Seeds exactly as docs/architecture.md §4: a CPU generator per image, image i from seed + i."""

import numpy as np
import pytest
import torch

from generation import engine
from generation.engine.seeds import generators, initial_noise


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_the_same_recipe_gives_identical_bytes(make_recipe, tiny_pipeline):
    recipe = make_recipe(sampler="Euler a", batch_size=2)
    first = engine.generate(recipe, pipeline=tiny_pipeline, preview=None)
    second = engine.generate(recipe, pipeline=tiny_pipeline, preview=None)
    for a, b in zip(first.images, second.images, strict=True):
        assert a.tobytes() == b.tobytes()


def test_image_i_of_a_batch_matches_a_single_run_with_seed_plus_i(make_recipe, tiny_pipeline):
    for sampler in ("DDIM", "DPM++ SDE Karras"):
        batch = engine.generate(
            make_recipe(sampler=sampler, batch_size=3, seed=10),
            pipeline=tiny_pipeline,
            preview=None,
        )
        single = engine.generate(
            make_recipe(sampler=sampler, seed=12), pipeline=tiny_pipeline, preview=None
        )
        # Batched CPU kernels round differently: up to one 8-bit level (docs/architecture.md §4).
        assert np.abs(pixels(batch.images[2]) - pixels(single.images[0])).max() <= 1
        assert batch.recipes[2].batch_index == 2 and batch.recipes[2].image_seed == 12


def test_the_noise_is_diffusers_draw_from_one_cpu_generator_per_image():
    noise = initial_noise(
        (2, 4, 4, 4),
        generators(5, 2),
        subseed=0,
        subseed_strength=0.0,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    expected = torch.randn((1, 4, 4, 4), generator=torch.Generator("cpu").manual_seed(6))
    assert torch.equal(noise[1:], expected)


def test_variation_strength_zero_equals_the_plain_seed(make_recipe, tiny_pipeline):
    plain = engine.generate(make_recipe(), pipeline=tiny_pipeline, preview=None)
    varied = engine.generate(
        make_recipe(subseed=99, subseed_strength=0.0), pipeline=tiny_pipeline, preview=None
    )
    assert plain.images[0].tobytes() == varied.images[0].tobytes()


def test_variation_strength_blends_towards_the_subseed_noise():
    def noise(strength: float) -> torch.Tensor:
        return initial_noise(
            (1, 4, 8, 8),
            generators(1, 1),
            subseed=2,
            subseed_strength=strength,
            device=torch.device("cpu"),
            dtype=torch.float32,
        )

    plain, other = noise(0.0), torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(2))
    half = noise(0.5)
    assert torch.allclose(noise(1.0), other, atol=1e-5)
    # Spherical: halfway keeps the norm of Gaussian noise, where a linear blend of two
    # independent noises would shrink it by about 1/sqrt(2).
    ends = (plain.norm() + other.norm()).item() / 2
    assert half.norm().item() == pytest.approx(ends, rel=0.05)
    assert ((plain + other) / 2).norm().item() < 0.8 * ends


def test_a_random_seed_is_drawn_once_and_stored(tiny_ref):
    recipe = engine.build_recipe(model=tiny_ref, prompt="a", width=32, height=32, seed=None)
    assert 0 <= recipe.seed <= engine.SEED_MAX
    assert recipe.to_json()["seed"] == recipe.seed


def test_threads_are_pinned_for_the_run_and_recorded(make_recipe, tiny_pipeline):
    from dataclasses import replace

    recipe = replace(make_recipe(steps=1), threads=2)
    seen = []
    result = engine.generate(
        recipe,
        pipeline=tiny_pipeline,
        preview=None,
        on_step=lambda *_: seen.append(torch.get_num_threads()),
    )
    assert seen == [2] and result.recipes[0].threads == 2
    assert torch.get_num_threads() == 1  # restored
    default = engine.generate(make_recipe(steps=1), pipeline=tiny_pipeline, preview=None)
    assert default.recipes[0].threads == 1
