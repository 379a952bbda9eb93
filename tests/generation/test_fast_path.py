"""The GPU fast path (docs/engine.md, "The fast path"): each part is a setting, applied as a
worker loads a pipeline, off by default and always off on the CPU; the recipe records it and
a reproduction runs with it, or is refused with the reason."""

import json
from dataclasses import replace

import pytest
import torch

from generation import engine, registry
from generation.engine import fast_pipeline, models

CPU = torch.device("cpu")
FAST = engine.FastPath(channels_last=True, fused_qkv=True)


@pytest.fixture
def fast_pipeline_of(tiny_model):
    """The tiny model loaded with a fast path, dropped from the cache afterwards."""
    loaded = []

    def load(fast_path: engine.FastPath) -> engine.StudioPipeline:
        loaded.append(fast_path)
        return engine.load_pipeline(tiny_model, device=CPU, dtype=torch.float32,
                                    fast_path=fast_path)

    yield load
    for fast_path in loaded:
        models._pipelines.pop(models._key(tiny_model, CPU, torch.float32, False, fast_path), None)


def test_attention_is_pytorch_sdpa(tiny_pipeline):
    assert fast_pipeline.attention_processors(tiny_pipeline) == {"AttnProcessor2_0"}


def test_channels_last_and_fused_qkv_change_the_loaded_modules(fast_pipeline_of):
    pipe = fast_pipeline_of(FAST)
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert pipe.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast_pipeline.attention_processors(pipe) == {"FusedAttnProcessor2_0"}
    attention = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0]
    assert attention.attn1.to_qkv.weight.shape[0] == 3 * attention.attn1.to_q.weight.shape[0]
    assert attention.attn2.to_kv.weight.shape[0] == 2 * attention.attn2.to_k.weight.shape[0]
    assert fast_pipeline.prepared_fast_path(pipe) == FAST


def test_a_plain_load_has_no_fast_path(tiny_pipeline):
    assert fast_pipeline.prepared_fast_path(tiny_pipeline) == engine.FastPath()
    assert tiny_pipeline.unet.conv_in.weight.is_contiguous()


def test_the_fast_path_is_off_by_default(settings):
    assert (settings.STUDIO_COMPILE, settings.STUDIO_CHANNELS_LAST,
            settings.STUDIO_FUSED_QKV) == ("off", False, False)
    assert registry.fast_path() == engine.FastPath()


def test_it_is_always_off_on_the_cpu(settings):
    settings.STUDIO_DEVICE = "cpu"
    settings.STUDIO_COMPILE = "max-autotune"
    settings.STUDIO_CHANNELS_LAST = settings.STUDIO_FUSED_QKV = True
    assert registry.fast_path() == engine.FastPath()


def test_the_worker_reads_its_settings_on_cuda(settings, monkeypatch):
    monkeypatch.setattr(registry, "device", lambda: (torch.device("cuda"), torch.bfloat16))
    settings.STUDIO_COMPILE = "reduce-overhead"
    settings.STUDIO_CHANNELS_LAST = True
    assert registry.fast_path() == engine.FastPath(compile="reduce-overhead", channels_last=True)


def test_the_recipe_records_the_fast_path_and_round_trips(make_recipe, fast_pipeline_of):
    pipe = fast_pipeline_of(FAST)
    recipe = engine.generate(make_recipe(), pipeline=pipe, preview=None).recipes[0]
    assert recipe.to_json()["fast_path"] == {"compile": "off", "channels_last": True,
                                             "fused_qkv": True}
    assert engine.Recipe.from_json(json.loads(json.dumps(recipe.to_json()))) == recipe


def test_a_reproduction_with_the_fast_path_is_identical(make_recipe, fast_pipeline_of):
    pipe = fast_pipeline_of(FAST)
    first = engine.generate(make_recipe(batch_size=2), pipeline=pipe, preview=None)
    image, comparison = engine.reproduce(first.recipes[1], first.images[1], pipeline=pipe)
    assert comparison.verdict == engine.IDENTICAL


def test_a_merged_batch_records_its_fast_path_and_reproduces(make_recipe, fast_pipeline_of):
    pipe = fast_pipeline_of(FAST)
    jobs = [make_recipe(prompt="red circle", seed=40), make_recipe(prompt="blue", seed=7)]
    merged = engine.generate_batch(jobs, pipeline=pipe, preview=None)
    assert {recipe.fast_path for recipe in merged.recipes} == {FAST}
    image, comparison = engine.reproduce(merged.recipes[1], merged.images[1], pipeline=pipe)
    assert comparison.verdict == engine.IDENTICAL


def test_the_fast_path_changes_no_more_than_the_last_bits(make_recipe, tiny_pipeline,
                                                          fast_pipeline_of):
    # Measured on the CPU in float32: channels-last and fused projections each move the
    # output by about 2e-6, so a recipe must say which ran.
    recipe = make_recipe()
    stock = engine.generate(recipe, pipeline=tiny_pipeline, preview=None).images[0]
    fast = engine.generate(recipe, pipeline=fast_pipeline_of(FAST), preview=None).images[0]
    assert engine.compare_images(stock, fast).verdict in (engine.IDENTICAL,
                                                          engine.WITHIN_ONE_LEVEL)


def test_a_recipe_for_another_fast_path_is_refused_by_a_pipeline_loaded_without(
        make_recipe, tiny_pipeline, fast_pipeline_of):
    recorded = engine.generate(make_recipe(), pipeline=fast_pipeline_of(FAST),
                               preview=None).recipes[0]
    with pytest.raises(engine.GenerationError, match="load it with the recipe's fast path"):
        engine.generate(recorded, pipeline=tiny_pipeline, preview=None)


def test_the_worker_loads_a_reproduction_with_its_own_fast_path(make_recipe, fast_pipeline_of,
                                                                 tiny_pipeline):
    recorded = engine.generate(make_recipe(), pipeline=fast_pipeline_of(FAST),
                               preview=None).recipes[0]
    assert registry.model_memory(recorded)["fast_path"] == FAST
    assert registry.model_memory(make_recipe())["fast_path"] == engine.FastPath()


def test_fused_projections_are_per_run_and_never_with_loras(make_recipe, fast_pipeline_of,
                                                            tiny_pipeline):
    pipe = fast_pipeline_of(FAST)
    # A recipe without a fast path on a fused pipeline runs fused; the pipeline stays fused.
    assert engine.run_fast_path(make_recipe(), FAST) == FAST
    lora = engine.LoraRef(name="style", weight=1.0)
    assert engine.run_fast_path(replace(make_recipe(), loras=(lora,)), FAST).fused_qkv is False
    unfused = replace(FAST, fused_qkv=False)
    recipe = engine.generate(replace(make_recipe(), fast_path=unfused), pipeline=pipe,
                             preview=None).recipes[0]
    assert recipe.fast_path == unfused
    assert fast_pipeline.attention_processors(pipe) == {"FusedAttnProcessor2_0"}
    with pytest.raises(engine.RecipeError, match="fast_path.fused_qkv"):
        engine.validate_recipe(replace(make_recipe(), loras=(lora,), fast_path=FAST))


def test_fusing_is_switched_per_run_and_back_exactly(make_recipe, fast_pipeline_of):
    pipe = fast_pipeline_of(FAST)
    unfused = replace(make_recipe(), fast_path=replace(FAST, fused_qkv=False))
    before = engine.generate(unfused, pipeline=pipe, preview=None).images[0]
    fused = engine.generate(make_recipe(), pipeline=pipe, preview=None).images[0]
    after = engine.generate(unfused, pipeline=pipe, preview=None).images[0]
    assert engine.compare_images(before, after).verdict == engine.IDENTICAL
    assert engine.compare_images(before, fused).verdict in (engine.IDENTICAL,
                                                            engine.WITHIN_ONE_LEVEL)


def test_an_older_recipe_ran_without_a_fast_path(make_recipe):
    older = replace(make_recipe(), versions=engine.Versions.current())
    assert engine.run_fast_path(older, FAST) == engine.FastPath()


def test_cuda_graphs_are_refused_on_the_cpu(tiny_model, make_recipe, tiny_pipeline):
    graphs = engine.FastPath(compile="reduce-overhead")
    with pytest.raises(engine.GenerationError, match="CUDA graphs, which need CUDA"):
        engine.load_pipeline(tiny_model, device=CPU, dtype=torch.float32, fast_path=graphs)
    assert not engine.pipeline_loaded(tiny_model, device=CPU, dtype=torch.float32,
                                      fast_path=graphs)


def test_bad_fast_paths_are_refused_by_field(make_recipe):
    data = make_recipe().to_json() | {"fast_path": {"compile": "fastest", "channels_last": 1,
                                                    "fused_qkv": False}}
    with pytest.raises(engine.RecipeError) as refused:
        engine.validate_recipe(engine.Recipe.from_json(data))
    assert set(refused.value.errors) == {"fast_path.compile", "fast_path.channels_last"}
    with pytest.raises(engine.RecipeError, match="not a Studio recipe"):
        engine.Recipe.from_json(data | {"fast_path": {"turbo": True}})


def test_compiling_compiles_the_unet_and_decoder_and_warms_up(tiny_model, monkeypatch):
    # A real compile of even the tiny model takes about two minutes on two CPU cores; the
    # benchmark compiles for real (tests/benchmarks/gpu_throughput.py --small --compile).
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **options: compiled.append(options) or fn)
    fast_path = engine.FastPath(compile="max-autotune")
    try:
        pipe = engine.load_pipeline(tiny_model, device=CPU, dtype=torch.float32,
                                    fast_path=fast_path)
        assert [options["mode"] for options in compiled] == ["max-autotune"] * 2
        assert engine.warm_up(pipe) > 0
    finally:
        models._pipelines.pop(models._key(tiny_model, CPU, torch.float32, False, fast_path))


def test_an_uncompiled_pipeline_needs_no_warm_up(tiny_pipeline):
    assert engine.warm_up(tiny_pipeline) == 0.0
