"""Cancel: checked after every model call, the run stops within one step."""

import threading

import pytest

from generation import engine


def count_unet_calls(pipeline):
    calls = []
    handle = pipeline.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls, handle


def test_it_stops_within_one_step_and_reports_canceled(make_recipe, tiny_pipeline):
    steps = []
    calls, handle = count_unet_calls(tiny_pipeline)
    try:
        result = engine.generate(
            make_recipe(steps=8),
            pipeline=tiny_pipeline,
            on_step=lambda step, *_: steps.append(step),
            should_cancel=lambda: len(calls) >= 3,
        )
    finally:
        handle.remove()
    assert result.canceled and result.images == [] and result.recipes == []
    assert steps == [1, 2, 3] and len(calls) == 3


def test_a_second_order_sampler_stops_after_the_model_call_that_saw_it(make_recipe, tiny_pipeline):
    calls, handle = count_unet_calls(tiny_pipeline)
    try:
        # Heun calls the model twice a step; asked after the third call, mid-step.
        result = engine.generate(
            make_recipe(sampler="Heun", steps=6),
            pipeline=tiny_pipeline,
            should_cancel=lambda: len(calls) >= 3,
        )
    finally:
        handle.remove()
    assert result.canceled and len(calls) == 3


def test_canceled_before_the_first_step_runs_nothing(make_recipe, tiny_pipeline):
    calls, handle = count_unet_calls(tiny_pipeline)
    try:
        result = engine.generate(make_recipe(), pipeline=tiny_pipeline, should_cancel=lambda: True)
    finally:
        handle.remove()
    assert result.canceled and calls == []


def test_a_run_not_canceled_finishes(make_recipe, tiny_pipeline):
    result = engine.generate(make_recipe(), pipeline=tiny_pipeline, should_cancel=lambda: False)
    assert not result.canceled and len(result.images) == 1


def test_every_step_reaches_on_step_in_order_before_generate_returns(make_recipe, tiny_pipeline):
    seen = []
    result = engine.generate(
        make_recipe(steps=9), pipeline=tiny_pipeline, on_step=lambda step, *_: seen.append(step)
    )
    assert seen == list(range(1, 10)) and len(result.images) == 1


def test_on_step_runs_on_the_sampling_thread(make_recipe, tiny_pipeline):
    threads = []
    engine.generate(
        make_recipe(steps=4), pipeline=tiny_pipeline,
        on_step=lambda *_: threads.append(threading.current_thread()),
    )
    # generate runs the loop on its caller's thread
    assert threads == [threading.current_thread()] * 4


def test_a_failing_on_step_stops_the_run_at_that_step(make_recipe, tiny_pipeline):
    calls, handle = count_unet_calls(tiny_pipeline)
    seen = []

    def on_step(step, *_):
        seen.append(step)
        if step == 2:
            raise RuntimeError("the hand-over broke")

    try:
        with pytest.raises(RuntimeError, match="the hand-over broke"):
            engine.generate(make_recipe(steps=12), pipeline=tiny_pipeline, on_step=on_step)
    finally:
        handle.remove()
    assert seen == [1, 2] and len(calls) == 2  # no model call after the failing step
