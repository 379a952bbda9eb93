"""Classifier-free guidance: one batched UNet call per step, none for the unconditional
prompt when the scale is at most 1; the negative prompt is the unconditional text."""

import pytest

from generation import engine


@pytest.fixture
def unet_batches(tiny_pipeline):
    """The batch size of every UNet call, measured with a forward hook."""
    sizes = []
    handle = tiny_pipeline.unet.register_forward_pre_hook(
        lambda module, args: sizes.append(args[0].shape[0])
    )
    yield sizes
    handle.remove()


@pytest.mark.parametrize(("scale", "batch"), [(0.0, 2), (1.0, 2), (3.0, 4)])
def test_cond_and_uncond_run_in_one_call_and_uncond_is_skipped_at_most_1(
    scale, batch, make_recipe, tiny_pipeline, unet_batches
):
    engine.generate(
        make_recipe(guidance_scale=scale, batch_size=2), pipeline=tiny_pipeline, preview=None
    )
    assert unet_batches == [batch] * 4


def test_the_negative_prompt_steers_only_with_guidance(make_recipe, tiny_pipeline):
    def image(**fields):
        return (
            engine.generate(make_recipe(**fields), pipeline=tiny_pipeline, preview=None)
            .images[0]
            .tobytes()
        )

    assert image(guidance_scale=5.0, negative_prompt="blue") != image(guidance_scale=5.0)
    assert image(guidance_scale=1.0, negative_prompt="blue") == image(guidance_scale=1.0)


def test_guidance_changes_the_image(make_recipe, tiny_pipeline):
    def image(scale):
        return engine.generate(
            make_recipe(guidance_scale=scale), pipeline=tiny_pipeline, preview=None
        ).images[0]

    assert image(1.0).tobytes() != image(7.0).tobytes()
