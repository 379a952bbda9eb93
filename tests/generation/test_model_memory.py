"""A worker's models within a memory budget, least recently used first; diffusers' memory
savers (model CPU offload, VAE tiling) and what they do to the pixels; the loading news a
job's watchers hear. On copies of the tiny model, each copy a model of its own."""

import shutil
import threading
import time
import weakref
from dataclasses import replace

import numpy as np
import pytest
import torch

from generation import broadcast, engine, recipes, registry, runner, services
from generation.engine import models, vae_tiling

CPU = torch.device("cpu")
F32 = torch.float32


@pytest.fixture(autouse=True)
def own_cache():
    """Each test starts with no pipeline loaded and leaves the session's cache as it was: a
    budget here would otherwise drop the pipelines other tests' fixtures hold."""
    kept = dict(models._pipelines)
    models._pipelines.clear()
    yield
    models._pipelines.clear()
    models._pipelines.update(kept)


@pytest.fixture
def copies(tiny_model, tmp_path) -> list[str]:
    """Three copies of the tiny model: three sources, three pipelines."""
    for name in "abc":
        shutil.copytree(tiny_model, tmp_path / name)
    return [str(tmp_path / name) for name in "abc"]


def load(source: str, budget: int = 0, **options) -> engine.StudioPipeline:
    return engine.load_pipeline(source, device=CPU, dtype=F32, budget_bytes=budget, **options)


def loaded(*sources: str) -> list[bool]:
    return [engine.pipeline_loaded(source, device=CPU, dtype=F32) for source in sources]


def recipe_for(source: str, **values) -> engine.Recipe:
    values = {"prompt": "a red circle", "steps": 4, "width": 32, "height": 32, "seed": 7,
              **values}
    return engine.build_recipe(model=engine.ModelRef(name="copy", source=source), **values)


def pixels(result: engine.Result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


# --- The budget -----------------------------------------------------------------------------


def test_without_a_budget_every_model_stays_loaded(copies):
    for source in copies:
        load(source)
    assert loaded(*copies) == [True, True, True]


def test_the_least_recently_used_model_goes_first_beyond_the_budget(copies):
    a, b, c = copies
    size = models.pipeline_bytes(load(a))
    budget = size * 5 // 2  # two fit, three do not
    gone = weakref.ref(load(b, budget))
    load(a, budget)  # used again: b is now the least recently used
    load(c, budget)
    assert loaded(a, b, c) == [True, False, True]
    assert gone() is None  # dropped, not only forgotten: its memory is free
    load(b, budget)  # a was used before c
    assert loaded(a, b, c) == [False, True, True]


def test_a_model_in_use_is_not_dropped_though_least_recently_used(copies):
    a, b, c = copies
    budget = models.pipeline_bytes(load(a)) * 5 // 2
    at_step, go_on, outcome = threading.Event(), threading.Event(), {}

    def held_at_first_step(step, total, preview, elapsed):
        if step == 1:
            at_step.set()
            go_on.wait(60)

    def run():
        outcome["result"] = engine.generate(recipe_for(a), pipeline=load(a, budget),
                                            on_step=held_at_first_step, preview=None)

    runner_thread = threading.Thread(target=run)
    runner_thread.start()
    try:
        assert at_step.wait(60)
        load(b, budget)
        load(c, budget)  # a is the least recently used, but a run uses it: b goes
        assert loaded(a, b, c) == [True, False, True]
    finally:
        go_on.set()
        runner_thread.join(60)
    assert outcome["result"].images
    load(b, budget)  # the run over, a was used last when it ended: c goes
    assert loaded(a, b, c) == [True, True, False]


def test_a_model_larger_than_the_whole_budget_loads_alone_with_a_warning(copies, caplog):
    a, b, _ = copies
    load(a, budget=1)
    load(b, budget=1)
    assert loaded(a, b) == [False, True]
    assert "more than the whole budget" in caplog.text


def test_the_estimate_from_the_file_headers_is_what_the_weights_take(copies, family_models):
    """Within the buffers no file holds (a text encoder's position ids: 8 bytes a token)."""
    measured = models.pipeline_bytes(load(copies[0]))
    assert models.estimated_bytes(copies[0], F32) == pytest.approx(measured, rel=0.001)
    assert models.estimated_bytes(copies[0], torch.float16) < measured * 0.51
    sdxl = family_models["sdxl"]
    measured = models.pipeline_bytes(load(sdxl.folder))
    assert models.estimated_bytes(sdxl.folder, F32) == pytest.approx(measured, rel=0.001)
    # A single file's header holds the same weights, under the original layout's names.
    assert models.estimated_bytes(sdxl.file, F32) == pytest.approx(measured, rel=0.001)


# --- Model CPU offload --------------------------------------------------------------------


def test_cpu_offload_is_ignored_on_the_cpu_with_a_log_line(copies, caplog):
    caplog.set_level("INFO", logger=models.__name__)
    offloaded = load(copies[0], cpu_offload=True)
    assert "offload is for CUDA" in caplog.text
    assert offloaded is load(copies[0])
    assert engine.pipeline_loaded(copies[0], device=CPU, dtype=F32, cpu_offload=True)


def test_offloaded_models_make_the_same_pixels(copies):
    """On the CPU the offload hooks move nothing, but they run: the pipeline, the run's
    view of it and the VAE's decode all go through them, as on a GPU."""
    recipe = recipe_for(copies[0], sampler="Euler a")
    pipe = load(copies[0])
    before = engine.generate(recipe, pipeline=pipe, preview=None)
    models.offload_models(pipe, CPU)
    after = engine.generate(recipe, pipeline=pipe, preview=None)
    assert np.array_equal(pixels(before), pixels(after))
    assert after.recipes[0].device == "cpu"


# --- VAE tiling ---------------------------------------------------------------------------


def test_tiling_is_the_vaes_during_the_run_only(copies):
    pipe = load(copies[0])
    seen = []
    result = engine.generate(
        recipe_for(copies[0]), pipeline=pipe, vae_tiling="on", preview=None,
        on_step=lambda *args: seen.append(pipe.vae.use_tiling),
    )
    assert seen == [True] * 4 and result.recipes[0].vae_tiling is True
    assert pipe.vae.use_tiling is False


def test_tiling_a_latent_no_larger_than_a_tile_changes_nothing(copies):
    pipe = load(copies[0])  # its VAE's tiles: 32 pixels, 8 latents a side
    assert pipe.vae.tile_latent_min_size == 8
    recipe = recipe_for(copies[0])
    tiled = engine.generate(recipe, pipeline=pipe, vae_tiling="on", preview=None)
    whole = engine.generate(recipe, pipeline=pipe, vae_tiling="off", preview=None)
    assert [tiled.recipes[0].vae_tiling, whole.recipes[0].vae_tiling] == [True, False]
    assert np.array_equal(pixels(tiled), pixels(whole))


def test_a_reproduction_tiles_as_its_recipe_says_whatever_the_worker_would(copies):
    pipe = load(copies[0])
    recipe = recipe_for(copies[0], width=64, height=64)  # four tiles
    tiled = engine.generate(recipe, pipeline=pipe, vae_tiling="on", preview=None)
    whole = engine.generate(recipe, pipeline=pipe, vae_tiling="off", preview=None)
    assert not np.array_equal(pixels(tiled), pixels(whole))  # tiles blend
    again = engine.generate(tiled.recipes[0], pipeline=pipe, vae_tiling="off", preview=None)
    assert np.array_equal(pixels(again), pixels(tiled))
    # A recipe that ran before recipes recorded tiling was not tiled.
    older = replace(whole.recipes[0], vae_tiling=None)
    again = engine.generate(older, pipeline=pipe, vae_tiling="on", preview=None)
    assert np.array_equal(pixels(again), pixels(whole))


def test_auto_tiles_only_a_decode_that_would_not_fit(copies, family_models):
    pipe = load(copies[0])
    free = vae_tiling.available_bytes(CPU)
    assert free > 0
    size = {"batch_size": 1, "width": 64, "height": 64}
    assert vae_tiling.decode_bytes(pipe, **size) < free
    assert not vae_tiling.tiling_for(pipe, "auto", **size)
    huge = {"batch_size": 8, "width": 1 << 20, "height": 1 << 20}
    assert vae_tiling.decode_bytes(pipe, **huge) > free
    assert vae_tiling.tiling_for(pipe, "auto", **huge)
    assert vae_tiling.tiling_for(pipe, "on", **size)
    assert not vae_tiling.tiling_for(pipe, "off", **huge)
    # Eight bytes a pixel per channel of the last block and byte of the dtype: SD's VAE
    # (128 channels) in float32 takes 4 kB a pixel.
    assert vae_tiling.decode_bytes(pipe, **size) == 8 * 4 * 4 * 64 * 64
    with pytest.raises(ValueError, match="must be one of off, on, auto"):
        vae_tiling.tiling_for(pipe, "sometimes", **size)


# --- Settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "size"), [
    ("", 0), ("0", 0), ("1000", 1000), ("12GB", 12 * 10**9), ("11.5 GiB", int(11.5 * 2**30)),
    ("512mib", 512 * 2**20),
])
def test_a_memory_size_is_bytes_or_a_number_with_a_unit(monkeypatch, value, size):
    from studio.settings import envbytes

    monkeypatch.setenv("STUDIO_TEST_SIZE", value)
    assert envbytes("STUDIO_TEST_SIZE", 0) == size


@pytest.mark.parametrize("value", ["12G", "GB", "-1", "lots", "inf", "nan"])
def test_a_memory_size_that_is_not_one_is_refused(monkeypatch, value):
    from django.core.exceptions import ImproperlyConfigured

    from studio.settings import envbytes

    monkeypatch.setenv("STUDIO_TEST_SIZE", value)
    with pytest.raises(ImproperlyConfigured, match="STUDIO_TEST_SIZE must be a size"):
        envbytes("STUDIO_TEST_SIZE", 0)


def test_the_worker_reads_the_memory_settings(settings):
    assert registry.model_memory() == {"budget_bytes": 0, "cpu_offload": False,
                                       "fast_path": engine.FastPath()}
    assert registry.vae_tiling() == "off"
    settings.STUDIO_WORKER_MODEL_MEMORY = 12 * 10**9
    settings.STUDIO_CPU_OFFLOAD = "model"
    settings.STUDIO_VAE_TILING = "auto"
    assert registry.model_memory() == {"budget_bytes": 12 * 10**9, "cpu_offload": True,
                                       "fast_path": engine.FastPath()}
    assert registry.vae_tiling() == "auto"


# --- Loading news -------------------------------------------------------------------------


@pytest.mark.django_db
def test_watchers_hear_the_seconds_a_model_has_been_loading(alice, tiny, monkeypatch):
    monkeypatch.setattr(runner, "LOADING_NEWS_SECONDS", 0.2)
    params = {"prompt": "red circle", "model": tiny, "steps": 4, "width": 32, "height": 32}
    services.job_submit(user=alice, recipe=recipes.recipe_from_params(params))
    job = services.job_claim_next(worker="test")

    def news() -> dict:
        return broadcast.latest(job.group_name)["job"]

    with runner.loading_news(job, "tiny"):
        first = news()
        time.sleep(1.5)
        later = news()
    assert (first["status"], first["loading_model"], first["loading_seconds"]) == (
        "running", "tiny", 0)
    assert later["loading_model"] == "tiny" and later["loading_seconds"] >= 1
    assert not [t for t in threading.enumerate() if t.name.startswith("loading-news")]
    time.sleep(0.5)
    assert news() == later  # nothing after the load: the first step's message comes next
