"""Running a recipe: the stock diffusers pipeline, with a step callback for previews, timings
and cancel, and the initial noise drawn exactly as docs/architecture.md §4 fixes it."""

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .checkpoints import is_single_file
from .comparison import Comparison, compare_images
from .errors import GenerationError, InputMissingError, WeightsMismatchError
from .fast_path import FastPath
from .fast_pipeline import check_prepared, fused_attention, prepared_fast_path
from .image_runs import Inputs, decode, from_image, paste_back, read_inputs, refine
from .inputs import output_size
from .lora_weights import apply_loras
from .models import (
    Pipeline,
    execution_device,
    in_use,
    load_pipeline,
    pipeline_spec,
    resolve_device,
    run_view,
)
from .previews import DEFAULT_PREVIEWS, LatentRGB, Previews, latent_rgb_for
from .recipe import ModelRef, Recipe, Versions, run_fast_path
from .samplers import make_scheduler, scheduler_from_ref, scheduler_ref
from .seeds import generators, initial_noise
from .specs import model_dir, weights_hash
from .stepper import OnStep, ShouldCancel, Stepper, interrupt
from .vae_tiling import decode_in_tiles, tiling_for
from .validation import validate_recipe

# Raised by generate and imported from here by callers; interrupt: by the internals test.
__all__ = ["GenerationError", "InputMissingError", "Result", "WeightsMismatchError",
           "generate", "interrupt", "reproduce", "warm_up"]


@dataclass
class Result:
    images: list[Image.Image]  # in batch order; empty when canceled
    recipes: list[Recipe]  # one per image, with its batch_index
    # Seconds: "load" (0 when the pipeline was given), "steps" (each), "decode", "total".
    timings: dict[str, Any] = field(default_factory=dict)
    canceled: bool = False


def generate(
    recipe: Recipe, *, pipeline: Pipeline | None = None, on_step: OnStep | None = None,
    should_cancel: ShouldCancel | None = None, preview: Previews | None = DEFAULT_PREVIEWS,
    lora_files: Mapping[str, Path] | None = None, hashes: Callable[[str], str] = weights_hash,
    vae_tiling: str = "off", inputs: Mapping[str, bytes] | None = None,
    fast_path: FastPath | None = None) -> Result:
    """Make the recipe's images.

    ``lora_files``: each LoRA the recipe names -> its file. ``hashes(source)``: a model's or
    LoRA's sha256 (Studio's worker passes its database-kept lookup). ``vae_tiling``: off, on
    or auto (``tiling_for``), unless the recipe says. ``inputs``: the sha256 of each input
    the recipe names -> its canonical PNG bytes; InputMissingError names one not given.
    ``fast_path``: the worker's (default: the pipeline's as loaded), unless the recipe says;
    GenerationError when the pipeline was not loaded for the one the run needs.

    1. Load the pipeline unless given; validate the recipe against it; check the weights',
       LoRAs' and inputs' hashes; apply the LoRAs (``_prepared``).
    2. Resolve what only this run knows: scheduler, device, dtype, threads, versions, VAE
       tiling, fast path. The shared pipeline is marked in use throughout (``models.in_use``).
    3. Run the passes (``_run``): text to image, img2img or inpainting, a hires fix's second
       pass; after each step ``on_step(step, steps_run(recipe), preview, elapsed)`` runs on
       the sampling thread (Studio's worker hands it to its sidecar) and ``should_cancel()``.
    4. Unless canceled, decode, pasting the init image back outside the mask where the
       recipe says: one image and one recipe per batch index.
    """
    started = time.perf_counter()
    lora_files = lora_files or {}
    if pipeline is None:
        device, dtype = resolve_device(recipe.device or "auto")
        pipeline = load_pipeline(recipe.model.source, device=device, dtype=dtype,
                                 fast_path=recipe.fast_path or FastPath())
    loaded = time.perf_counter()
    with in_use(pipeline):
        recipe, pipe, pictures = _prepared(recipe, pipeline, lora_files, hashes, inputs)
        recipe = _resolved(_fast(_tiled(recipe, pipeline, vae_tiling), pipeline, fast_path), pipe)
        stepper = Stepper(recipe, on_step, should_cancel, preview,
                          _latent_rgb(recipe, pipe, preview))
        if should_cancel is not None and should_cancel():
            return _canceled(stepper, loaded - started)
        with (pinned_threads(recipe.threads), decode_in_tiles(pipe, recipe.vae_tiling),
              fused_attention(pipe, recipe.fast_path.fused_qkv)):
            latents = _run(pipe, recipe, stepper, pictures)
            if stepper.canceled:
                return _canceled(stepper, loaded - started)
            decode_started = time.perf_counter()
            images = paste_back(pipe, decode(pipe, latents), recipe, pictures)
    timings = {**stepper.timings(loaded - started), "total": time.perf_counter() - started,
               "decode": time.perf_counter() - decode_started}
    return Result(images, [recipe.with_batch_index(i) for i in range(recipe.batch_size)],
                  timings)


def _prepared(
    recipe: Recipe,
    shared: Pipeline,
    lora_files: Mapping[str, Path],
    hashes: Callable[[str], str],
    inputs: Mapping[str, bytes] | None,
) -> tuple[Recipe, Pipeline, Inputs]:
    """Step 1 on the shared pipeline: the recipe validated against it, with the hashes of
    the model and LoRAs checked and filled in, the LoRAs applied, the run's view of the
    pipeline with its own scheduler, and the inputs the recipe names, read."""
    spec = pipeline_spec(shared)
    validate_recipe(recipe, spec)
    pictures = read_inputs(recipe, inputs)
    recipe = _with_checked_hashes(recipe, spec.family, lora_files, hashes)
    apply_loras(shared, [(lora.name, lora_files[lora.name], lora.hash, lora.weight)
                         for lora in recipe.loras])
    return recipe, _run_pipeline(recipe, shared), pictures


def _canceled(stepper: Stepper, load_seconds: float) -> Result:
    return Result(images=[], recipes=[], timings=stepper.timings(load_seconds), canceled=True)


def _run(pipe: Pipeline, recipe: Recipe, stepper: Stepper, pictures: Inputs) -> torch.Tensor:
    """The run's passes, to its final latents: text to image, or img2img or inpainting from
    the init image (``image_runs``); a hires fix refines the text-to-image latents."""
    stepper.start()
    if recipe.init_image is not None:
        latents = from_image(pipe, recipe, stepper, pictures)
    else:
        stepper.begin_pass(recipe.steps, pipe)
        latents = _denoise(pipe, recipe, stepper)
        if recipe.hires is not None and not stepper.canceled:
            latents = refine(pipe, recipe, stepper, latents)
    if not stepper.canceled and not torch.isfinite(latents).all():
        raise GenerationError(
            f"{recipe.sampler} produced non-finite latents at {recipe.steps} steps on this model; "
            "try more steps or another sampler"
        )
    return latents


# Whether this Studio's recipes have the field that records VAE tiling (engine/recipe.py).
def _tiled(recipe: Recipe, shared: Pipeline, mode: str) -> Recipe:
    """The recipe with whether its VAE decodes in tiles, which changes the pixels: as it
    says (a reproduction's; a recipe that ran before recipes recorded tiling did not tile),
    else as the worker's ``mode`` decides for its size."""
    tiled = recipe.vae_tiling
    if tiled is None and recipe.versions is not None:
        tiled = False
    if tiled is None:
        width, height = output_size(recipe)
        tiled = tiling_for(shared, mode, batch_size=recipe.batch_size, width=width,
                           height=height)
    return replace(recipe, vae_tiling=tiled)


def _fast(recipe: Recipe, shared: Pipeline, default: FastPath | None) -> Recipe:
    """The recipe with the fast path it runs with (``run_fast_path``), which the shared
    pipeline must have been loaded for (``check_prepared``)."""
    fast_path = run_fast_path(recipe, default or prepared_fast_path(shared))
    check_prepared(shared, fast_path)
    return replace(recipe, fast_path=fast_path)


def _with_checked_hashes(
    recipe: Recipe, family: str, lora_files: Mapping[str, Path], hashes: Callable[[str], str]
) -> Recipe:
    """The recipe with the model's and each LoRA's hash, and the model's family, filled in
    from the files; WeightsMismatchError where a recorded hash is not the files'."""
    model = recipe.model
    actual = hashes(model.source)
    if model.hash and model.hash != actual:
        raise WeightsMismatchError(
            f"model {model.name!r} at {model.source} has weights {actual[:12]}, "
            f"but the recipe was made with {model.hash[:12]}: it cannot be reproduced"
        )
    loras = []
    for lora in recipe.loras:
        if lora.name not in lora_files:
            raise GenerationError(f"LoRA {lora.name!r} is not on this worker")
        found = hashes(str(lora_files[lora.name]))
        if lora.hash and lora.hash != found:
            raise WeightsMismatchError(
                f"LoRA {lora.name!r} has the file {found[:12]}, but the recipe was made with "
                f"{lora.hash[:12]}: it cannot be reproduced"
            )
        loras.append(replace(lora, hash=found))
    return replace(recipe, model=replace(model, hash=actual, family=family),
                   loras=tuple(loras))


def _run_pipeline(recipe: Recipe, shared: Pipeline) -> Pipeline:
    """A view of the shared pipeline with this run's own scheduler: nothing shared changes."""
    if recipe.scheduler is not None:
        scheduler = scheduler_from_ref(recipe.scheduler)
    else:
        scheduler = make_scheduler(
            recipe.sampler, shared.scheduler.config, recipe.seed, recipe.batch_size
        )
    return run_view(shared, scheduler)


def _resolved(recipe: Recipe, pipe: Pipeline) -> Recipe:
    # One UNet weight tells device and dtype; the pipeline's own `device` and `dtype`
    # properties walk every module, milliseconds a run.
    weight = next(pipe.unet.parameters())
    return replace(
        recipe,
        scheduler=scheduler_ref(pipe.scheduler),
        dtype=str(weight.dtype).removeprefix("torch."),
        device=execution_device(pipe).type,
        threads=recipe.threads or torch.get_num_threads(),
        versions=Versions.current(),
    )


@contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count for the run: on the CPU it changes the low bits of the
    result, so a recipe records it and a reproduction pins the same."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_latent_rgb_cache: dict[str, LatentRGB] = {}


def _latent_rgb(recipe: Recipe, pipe: Pipeline, preview: Previews | None) -> LatentRGB | None:
    """The model's latent-to-RGB projection, found or fitted once per weights per process
    (the recipe's hash is checked by now). A folder model keeps a fit beside its weights; a
    single file's stays in memory, since the folder it lies in may be read-only or shared."""
    if preview is None:
        return None
    if recipe.model.hash not in _latent_rgb_cache:
        source = recipe.model.source
        # A file, or a pipeline built in memory (no source), keeps its fit in memory only.
        folder = None if not source or is_single_file(source) else model_dir(source)
        _latent_rgb_cache[recipe.model.hash] = latent_rgb_for(pipe, folder)
    return _latent_rgb_cache[recipe.model.hash]


def _denoise(pipe: Pipeline, recipe: Recipe, stepper: Stepper) -> torch.Tensor:
    """The stock text-to-image pipeline's denoising loop, from this recipe's noise, to the
    final latents."""
    prompts = {"prompt": recipe.prompt, "negative_prompt": recipe.negative_prompt or None,
               "num_images_per_prompt": recipe.batch_size}
    return stock_denoise(pipe, recipe, stepper, prompts,
                         generators(recipe.seed, recipe.batch_size),
                         subseed=recipe.subseed, subseed_strength=recipe.subseed_strength)


def stock_denoise(pipe: Pipeline, recipe: Recipe, stepper: Stepper, prompts: dict,
                  image_generators: list[torch.Generator], *, subseed: int = 0,
                  subseed_strength: float = 0.0) -> torch.Tensor:
    """One stock text-to-image call at `recipe`'s size, steps and guidance, to the final
    latents: each image's noise drawn from its own generator (one per image, in batch
    order), `prompts` as the pipeline takes them (the texts, or embeddings:
    batches.generate_batch encodes each job's alone)."""
    scale = pipe.vae_scale_factor
    shape = (len(image_generators), pipe.unet.config.in_channels,
             recipe.height // scale, recipe.width // scale)
    noise = initial_noise(
        shape,
        image_generators,
        subseed=subseed,
        subseed_strength=subseed_strength,
        device=pipe.device,
        dtype=_prompt_dtype(pipe),  # what the stock pipeline draws in
    )
    return pipe(
        **prompts,
        height=recipe.height,
        width=recipe.width,
        num_inference_steps=recipe.steps,
        guidance_scale=recipe.guidance_scale,
        # The same generators that drew the noise, now advanced past it: ancestral and SDE
        # samplers draw their per-step noise from them, as from a stock call's generators.
        generator=image_generators,
        latents=noise,
        output_type="latent",
        callback_on_step_end=stepper,
        callback_on_step_end_tensor_inputs=stepper.tensor_inputs,
    ).images


def _prompt_dtype(pipe: Pipeline) -> torch.dtype:
    """The dtype of the prompt embeddings, which the stock pipeline draws its noise in: the
    last text encoder's (SDXL's second)."""
    encoder = getattr(pipe, "text_encoder_2", None)
    return (pipe.text_encoder if encoder is None else encoder).dtype


def reproduce(
    recipe: Recipe,
    original: Image.Image,
    *,
    pipeline: Pipeline,
    inputs: Mapping[str, bytes] | None = None,
) -> tuple[Image.Image, Comparison]:
    """Run the recipe again, from the same ``inputs`` (as ``generate`` takes them), and
    compare with ``original``.

    The whole batch runs again, at the recorded threads, so the image at ``batch_index`` can
    come out identical; a single run with seed + batch_index would only be within a level.
    ``generate`` refuses (WeightsMismatchError) when the weights are not the recipe's, and
    (InputMissingError) when an input it names is not given.
    """
    result = generate(recipe, pipeline=pipeline, preview=None, inputs=inputs)
    image = result.images[recipe.batch_index]
    return image, compare_images(original, image)


# Warm-up runs: CUDA graphs are recorded at a compiled function's second call with a shape
# and replayed from its third; the VAE decoder is called once a run.
WARM_UP_RUNS = 3
WARM_UP_STEPS = 2


def warm_up(pipeline: Pipeline) -> float:
    """Compile a compiled pipeline now, not in someone's job: run the default recipe at the
    model's native size (one image, with guidance, as most jobs run) ``WARM_UP_RUNS`` times.
    A pipeline loaded without compiling needs no warm-up: 0 s. Other shapes (sizes, batch
    sizes) and samplers whose timesteps are floats compile at their first job. Returns the
    seconds it took."""
    if prepared_fast_path(pipeline).compile == "off":
        return 0.0
    started = time.perf_counter()
    spec = pipeline_spec(pipeline)
    recipe = Recipe(prompt="warm-up", model=ModelRef(name="warm-up", source="", family=spec.family),
                    width=spec.native_size, height=spec.native_size, steps=WARM_UP_STEPS)
    for _ in range(WARM_UP_RUNS):
        generate(recipe, pipeline=pipeline, hashes=lambda _source: "", preview=None)
    return time.perf_counter() - started
