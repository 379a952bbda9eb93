"""Runs one claimed job on this worker: the glue between a Job row and the engine."""

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import InterfaceError, OperationalError, close_old_connections, connections

from . import broadcast, engine, metrics, registry, selectors, services, sidecar, worker_registry
from .inputs import files_for
from .models import Job
from .presenters import job_state

log = logging.getLogger(__name__)

# While a model loads, its job's watchers hear how long it has taken so far, this often.
LOADING_NEWS_SECONDS = 5


def run(job: Job) -> str:
    """Run a claimed job to an end state and announce it.

    1. Load the model's pipeline (cached per model, device and dtype in this process, within
       its memory budget: registry.model_memory), and make sure the database knows its
       weights' hash (registry.weights_hash), so the web tier can show it without hashing.
       Meanwhile its watchers hear that it loads, and for how long (loading_news).
    2. Generate, from the job's input images if it has any (read through the storage),
       each step handed to this worker's sidecar process, which draws and publishes its
       preview, writes the heartbeat (which also carries the cancel check) and keeps every
       k-th step's frame of each image (generation/sidecar.py).
    3. Store every image the job shows (Job.shows) as a PNG carrying its recipe, with its
       frames, and finish the job with its outputs in one transaction, or mark it
       canceled, or failed with a reason a person can read.
    4. Record its wait, steps and end in the metrics (generation/metrics.py): its end only
       if this attempt's update made it, so a job the reaper ended is counted once.
    """
    stored, steps = None, []
    metrics.jobs_started([job])
    try:
        result, frames = _generate(job, sidecar.get().begin(job))
        steps = result.timings["steps"]
        if result.canceled:
            outcome = _stopped(job)
        else:
            stored = _finish(job, result, frames)
            outcome = "succeeded" if stored is not None else "superseded"
    except SoftTimeLimitExceeded:
        limit = settings.CELERY_TASK_SOFT_TIME_LIMIT
        outcome = _fail(job, f"The job took longer than the {limit} s time limit.")
    except Exception as exc:  # every failure ends the job, with its reason kept
        log.exception("job %s failed", job.pk)
        outcome = _fail(job, failure_reason(exc))
    if stored is None:  # a finished job holds its stored state already (services.job_finish)
        job.refresh_from_db()
    announce(job, outputs=stored)
    metrics.jobs_ended([job] if outcome in Job.FINISHED else [], steps=steps)
    return outcome


def run_batch(jobs: list[Job]) -> str:
    """Run claimed jobs as one engine batch (docs/architecture.md §3.3), each to an end state
    of its own, and announce each. As `run` does, but:

    - one sidecar run serves them all: each job's watchers get its own images' previews
      alone, and a job canceled or reaped meanwhile is no longer reported (the batch goes on
      for the others; it stops only once every job has);
    - a job canceled during the batch ends canceled when the batch ends; its images are
      made but dropped, and the others' are stored;
    - a failure of the run fails every job with its reason; one storing a job's images
      fails that job alone.
    """
    ended: dict = {}  # job id -> (outcome, stored outputs or None)
    step_seconds = []
    metrics.jobs_started(jobs)
    try:
        recipes = [_recipe(job) for job in jobs]
        steps = sidecar.get().begin_batch(jobs, [recipe.batch_size for recipe in recipes])
        result, frames = _generate_batch(jobs, recipes, steps)
        step_seconds = result.timings["steps"]
        for job, part in zip(jobs, _parts(result, recipes), strict=True):
            ended[job.pk] = _end_part(job, part, frames, steps)
    except Exception as exc:  # every failure ends the jobs not ended yet, with its reason
        if not isinstance(exc, SoftTimeLimitExceeded):
            log.exception("batch %s failed", [str(job.pk) for job in jobs])
        for job in jobs:
            if job.pk not in ended:
                ended[job.pk] = (_fail(job, _batch_failure(exc)), None)
    for job in jobs:
        outcome, stored = ended[job.pk]
        if stored is None:
            job.refresh_from_db()
        announce(job, outputs=stored)
    metrics.jobs_ended([job for job in jobs if ended[job.pk][0] in Job.FINISHED],
                       steps=step_seconds)
    return ", ".join(outcome for outcome, _ in ended.values())


def _generate_batch(jobs: list[Job], recipes: list[engine.Recipe],
                    steps: sidecar.SidecarRun) -> tuple[engine.Result, dict]:
    """The merged run's result (`model_load` in its timings, as `_generate`'s), and the
    frames the sidecar kept for each job."""
    try:
        pipeline, model_load = _pipeline(jobs, recipes[0])
        result = engine.generate_batch(
            recipes, pipeline=pipeline, on_step=steps.step, should_cancel=steps.should_stop,
            lora_files=_lora_files(recipes[0]), hashes=registry.weights_hash,
            vae_tiling=registry.vae_tiling(),
            fast_path=registry.model_memory(recipes[0])["fast_path"],
        )
    finally:
        frames = steps.end()
    result.timings.update(model_load=model_load, batched_jobs=len(jobs))
    return result, frames or {}


def _parts(result: engine.Result, recipes: list[engine.Recipe]) -> Iterator[engine.Result]:
    """Each job's share of the merged result: its images and their recipes (a canceled run
    has none), the run's timings."""
    start = 0
    for recipe in recipes:
        stop = start + recipe.batch_size
        yield engine.Result(images=result.images[start:stop], recipes=result.recipes[start:stop],
                            timings=dict(result.timings), canceled=result.canceled)
        start = stop


def _end_part(job: Job, part: engine.Result, frames: dict,
              steps: sidecar.SidecarRun) -> tuple[str, list | None]:
    if part.canceled or steps.has_stopped(job):
        return _stopped(job), None
    try:
        stored = _finish(job, part, frames.get(str(job.pk), []))
    except Exception as exc:  # this job's images alone are lost
        log.exception("job %s failed", job.pk)
        return _fail(job, failure_reason(exc)), None
    return ("succeeded" if stored is not None else "superseded"), stored


def _fail(job: Job, reason: str) -> str:
    """Fail the job: "failed", or "superseded" if it was no longer this attempt's to fail
    (the reaper took it back meanwhile, and counted its end if it ended it)."""
    return "failed" if services.job_fail(job=job, reason=reason) else "superseded"


def _batch_failure(exc: Exception) -> str:
    if isinstance(exc, SoftTimeLimitExceeded):
        limit = settings.CELERY_TASK_SOFT_TIME_LIMIT
        return f"The job took longer than the {limit} s time limit."
    return failure_reason(exc)


def announce(job: Job, outputs=None) -> None:
    """Send the job's final state to its watchers. Best effort, like progress: the state is
    stored already, and a client that misses this reads it over HTTP or on reconnect. The
    job's kept latest step goes with it (`keep=False`)."""
    try:
        state = job_state(selectors.job_view(job, outputs=outputs))
        broadcast.send(job.group_name, {"type": "job.state", "job": state}, keep=False)
    except Exception as exc:  # a lost message must not fail a finished job
        log.warning("could not announce job %s: %s", job.pk, exc)


def announce_loading(job: Job, model: str, state: dict | None = None, seconds: int = 0) -> None:
    """Tell the job's watchers that it runs but waits for its model to load (`loading_model`),
    and for how many seconds so far (`loading_seconds`): a real model takes seconds,
    sometimes longer than all the steps. Kept as the job's latest message until its first
    step replaces it, so a watcher who connects meanwhile hears it too. `state`: the job's,
    read before (loading_news reads it once, on the job's thread)."""
    try:
        state = state or job_state(selectors.job_view(job))
        message = {"type": "job.state", "attempt": job.attempt,
                   "job": state | {"loading_model": model, "loading_seconds": seconds}}
        broadcast.send(job.group_name, message, keep=True)
    except Exception as exc:  # only news: the run goes on
        log.warning("could not announce job %s: %s", job.pk, exc)


@contextmanager
def loading_news(job: Job, model: str) -> Iterator[None]:
    """Announce the model's loading now, then every LOADING_NEWS_SECONDS from a thread of
    its own while the job's thread loads it: the seconds are the honest measure there is, as
    diffusers reports no progress within a load. The thread reads no database, and has
    stopped by the time this returns, so no loading news can follow the job's first step
    (the sidecar publishes those)."""
    try:
        state = job_state(selectors.job_view(job))
    except Exception as exc:  # only news: the load goes on, unannounced
        log.warning("could not announce job %s: %s", job.pk, exc)
        yield
        return
    announce_loading(job, model, state)
    started = time.monotonic()
    done = threading.Event()

    def tick() -> None:
        while not done.wait(LOADING_NEWS_SECONDS):
            announce_loading(job, model, state, round(time.monotonic() - started))

    ticker = threading.Thread(target=tick, name=f"loading-news-{job.pk}", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()


def _generate(job: Job, steps: sidecar.SidecarRun) -> tuple[engine.Result, list[dict]]:
    """The engine's result, and the frames the sidecar kept. Its timings include
    `model_load`: the seconds this job waited for the model's pipeline to load and its
    weights to be hashed, 0 when this worker had it loaded already (the default model from
    the worker's start, see preload)."""
    recipe = _recipe(job)
    try:
        pipeline, model_load = _pipeline([job], recipe)
        # Each step is handed to the sidecar on the sampling thread: one send.
        result = engine.generate(
            recipe, pipeline=pipeline, on_step=steps.step, should_cancel=steps.should_stop,
            lora_files=_lora_files(recipe), hashes=registry.weights_hash,
            vae_tiling=registry.vae_tiling(), inputs=files_for(job),
            fast_path=registry.model_memory(recipe)["fast_path"],
        )
    finally:
        # Every step sent is reported and its heartbeat written before the job is finished,
        # so none can come after, and no step follows the final state.
        frames = steps.end()
    result.timings["model_load"] = model_load
    return result, frames


def _recipe(job: Job) -> engine.Recipe:
    """The job's recipe as this worker runs it. The server decides the threads, whatever a
    recipe says (services.job_submit). The model's source is the one the web server found;
    a worker on another host may keep the same model elsewhere, and then loads its own copy
    of that name (docs/operations.md §2): the weights' hash in the recipe still has to match."""
    recipe = replace(engine.Recipe.from_json(job.recipe), threads=registry.threads())
    if not worker_registry.loadable(recipe.model.source):
        source = registry.models().get(recipe.model.name)
        if source is not None:
            recipe = replace(recipe, model=replace(recipe.model, source=source))
    return recipe


def _pipeline(jobs: list[Job], recipe: engine.Recipe) -> tuple["engine.StudioPipeline", float]:
    """The recipe's model's pipeline, prepared for its fast path (registry.model_memory), and
    the seconds the jobs waited for it to load and its weights to be hashed (0 when this
    worker had it already); its watchers hear of the wait."""
    device, dtype = registry.device()
    model, memory = recipe.model, registry.model_memory(recipe)
    loaded = engine.pipeline_loaded(model.source, device=device, dtype=dtype,
                                    cpu_offload=memory["cpu_offload"],
                                    fast_path=memory["fast_path"])
    started = time.perf_counter()
    with ExitStack() as news:
        for job in [] if loaded else jobs:
            news.enter_context(loading_news(job, model.name))
        pipeline = engine.load_pipeline(model.source, device=device, dtype=dtype, **memory)
        registry.weights_hash(model.source)  # a lookup once the database has it
    return pipeline, 0.0 if loaded else time.perf_counter() - started


def holds(source: str) -> bool:
    """Whether this worker process has the model at `source` loaded: model affinity's
    question (claims.jobs_claim)."""
    device, dtype = registry.device()
    memory = registry.model_memory()
    return engine.pipeline_loaded(source, device=device, dtype=dtype,
                                  cpu_offload=memory["cpu_offload"], fast_path=memory["fast_path"])


def _lora_files(recipe: engine.Recipe) -> dict[str, Path]:
    """The files of the recipe's LoRAs that this worker has; the engine refuses the others."""
    files = registry.loras()
    return {lora.name: Path(files[lora.name]) for lora in recipe.loras if lora.name in files}


def preload() -> None:
    """Make this worker process ready for its first job before it takes one: start its
    sidecar, load the default model's pipeline and hash its weights (every run checks the
    hash, and hashing a real model's gigabytes takes seconds the first time), keeping the
    hash in the database for the web tier. A GPU worker process calls this as it starts
    (generation/tasks.py).

    The sidecar is forked first, from a process that holds no model, no CUDA context and no
    database connection yet. The connection the hash lookup opens is closed before this
    returns, leaving the process as Celery expects one it has just forked. A failure here is
    logged and the process goes on: its first job starts the sidecar or loads the model
    again, and fails with the reason if it cannot."""
    name = registry.default_name()
    started = time.perf_counter()
    try:
        source = registry.default_source()
        sidecar.get().start()
        device, dtype = registry.device()
        pipeline = engine.load_pipeline(source, device=device, dtype=dtype,
                                        **registry.model_memory())
        engine.warm_up(pipeline)  # a compiled one compiles now (STUDIO_COMPILE)
        registry.weights_hash(source)
    except Exception:
        log.exception("could not preload the default model %r", name)
        return
    finally:
        connections.close_all()
    log.info("preloaded the default model %r on %s in %.1f s",
             name, device, time.perf_counter() - started)


def _finish(job: Job, result, frames: list[dict]) -> list | None:
    """Store the images the job shows and finish the job; the others (a reproduction's
    siblings of its original) are dropped here, unstored. The images took the whole run to
    make: if the database connection broke meanwhile (a Postgres restart), try once more on
    a new one. The finish is one transaction, so the failed try left nothing behind but, at
    most, an unreferenced file."""

    # What A1111 writes for each LoRA, read from the files (which only a worker has): the
    # batch shares its LoRAs, so once for the job.
    files = _lora_files(result.recipes[0]) if result.recipes else {}
    lora_hashes = {name: engine.a1111_hash(path) for name, path in files.items()}

    def finish() -> list | None:
        # Numbered in the job's own batch: a merged batch's recipes number its places.
        outputs = [_output_fields(index, image, recipe, frames, lora_hashes)
                   for index, (image, recipe)
                   in enumerate(zip(result.images, result.recipes, strict=True))
                   if job.shows(index)]
        # Each output carries its own frames (Output.trajectory).
        return services.job_finish(job=job, outputs=outputs, timings=result.timings)

    try:
        return finish()
    except (OperationalError, InterfaceError) as exc:
        log.warning("finishing job %s failed, retrying on a new connection: %s", job.pk, exc)
        close_old_connections()
        return finish()


def _stopped(job: Job) -> str:
    """The run stopped early: canceled by its owner, or reaped and no longer ours."""
    job.refresh_from_db()
    if job.cancel_requested and services.job_mark_canceled(job=job):
        return "canceled"
    return "superseded"


def _output_fields(index: int, image, recipe, frames: list[dict],
                   lora_hashes: dict[str, str]) -> dict:
    png = engine.png_with_recipe(image, recipe, lora_hashes)
    return {
        "index": index,
        "image": ContentFile(png, name=f"{index}.png"),
        "recipe": recipe.to_json(),
        "width": image.width,
        "height": image.height,
        "trajectory": [{"step": frame["step"], "image": frame["image"]}
                       for frame in frames if frame["index"] == index],
    }


def failure_reason(exc: Exception) -> str:
    """What went wrong, in words for the person who submitted the job."""
    name = type(exc).__name__
    if name == "OutOfMemoryError":
        return "The GPU ran out of memory. Try a smaller size or batch."
    if isinstance(exc, engine.ModelLoadError):
        return f"The model could not be loaded: {exc}"
    if isinstance(exc, engine.InputMissingError):
        return f"The job cannot run: {exc}."
    return f"Generation failed ({name}): {exc}"
