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
from .previews import (
    DEFAULT_PREVIEWS,
    DecodedPreview,
    LatentPreview,
    LatentRGB,
    Previews,
    StepPreview,
    alpha_bar_at,
    latent_rgb_for,
    vae_decode,
    x0_from,
)
from .recipe import Recipe, Versions
from .samplers import make_scheduler, scheduler_from_ref, scheduler_ref
from .seeds import generators, initial_noise
from .specs import model_dir, weights_hash
from .vae_tiling import decode_in_tiles, tiling_for
from .validation import validate_recipe

OnStep = Callable[[int, int, StepPreview | None, float], None]
ShouldCancel = Callable[[], bool]


class WeightsMismatchError(RuntimeError):
    """The model's weights are not the ones the recipe was made with."""


class GenerationError(RuntimeError):
    """The run finished but produced no usable image."""


@dataclass
class Result:
    images: list[Image.Image]  # in batch order; empty when canceled
    recipes: list[Recipe]  # one per image, with its batch_index
    # Seconds: "load" (0 when the pipeline was given), "steps" (each), "decode", "total".
    timings: dict[str, Any] = field(default_factory=dict)
    canceled: bool = False


def generate(
    recipe: Recipe,
    *,
    pipeline: Pipeline | None = None,
    on_step: OnStep | None = None,
    should_cancel: ShouldCancel | None = None,
    preview: Previews | None = DEFAULT_PREVIEWS,
    lora_files: Mapping[str, Path] | None = None,
    hashes: Callable[[str], str] = weights_hash,
    vae_tiling: str = "off",
) -> Result:
    """Make the recipe's images.

    ``lora_files`` maps the name of each LoRA the recipe names to its file. ``hashes(source)``
    gives the sha256 of a model's weights or a LoRA's file (``weights_hash`` by default):
    Studio's worker passes its database-kept lookup, so a checkpoint of gigabytes is not
    hashed again in every new worker process. ``vae_tiling`` (off, on, auto: ``tiling_for``)
    decides whether the VAE decodes in tiles, unless the recipe says (``_tiled``).

    1. Load the pipeline unless given, validate the recipe against it and check that the
       weights and the LoRAs' files are the ones the recipe names; apply the LoRAs.
    2. Resolve what only this run knows: the scheduler, device, dtype, threads, versions,
       VAE tiling. The shared pipeline is marked in use throughout (``models.in_use``).
    3. Draw the initial noise and run the stock pipeline; after each step the callback reports
       ``on_step(step, total, preview, elapsed)`` and checks ``should_cancel()``. The preview
       is a StepPreview: its ``render()`` gives the picture's bytes. ``on_step`` runs on the
       sampling thread, between steps: a caller with much to do per step hands it on (Studio's
       worker sends it to another process, generation/sidecar.py).
    4. Unless canceled, decode the latents: one image and one recipe per batch index.
    """
    started = time.perf_counter()
    lora_files = lora_files or {}
    if pipeline is None:
        device, dtype = resolve_device(recipe.device or "auto")
        pipeline = load_pipeline(recipe.model.source, device=device, dtype=dtype)
    loaded = time.perf_counter()
    with in_use(pipeline):
        spec = pipeline_spec(pipeline)
        validate_recipe(recipe, spec)
        recipe = _with_checked_hashes(recipe, spec.family, lora_files, hashes)
        apply_loras(pipeline, [(lora.name, lora_files[lora.name], lora.hash, lora.weight)
                               for lora in recipe.loras])
        pipe = _run_pipeline(recipe, pipeline)
        recipe = _resolved(_tiled(recipe, pipeline, vae_tiling), pipe)
        stepper = _Stepper(
            recipe, on_step, should_cancel, preview, _latent_rgb(recipe, pipe, preview)
        )
        if should_cancel is not None and should_cancel():
            return Result(
                images=[], recipes=[], timings=stepper.timings(loaded - started), canceled=True
            )
        tiled = getattr(recipe, "vae_tiling", False)  # decided by now (_tiled)
        with pinned_threads(recipe.threads), decode_in_tiles(pipe, tiled):
            latents = _denoise(pipe, recipe, stepper)
            if stepper.canceled:
                return Result(
                    images=[], recipes=[], timings=stepper.timings(loaded - started),
                    canceled=True,
                )
            decode_started = time.perf_counter()
            images = _decode(pipe, latents)
    timings = stepper.timings(loaded - started)
    timings["decode"] = time.perf_counter() - decode_started
    timings["total"] = time.perf_counter() - started
    recipes = [recipe.with_batch_index(i) for i in range(recipe.batch_size)]
    return Result(images=images, recipes=recipes, timings=timings)


# Whether this Studio's recipes have the field that records VAE tiling (engine/recipe.py).
def _tiled(recipe: Recipe, shared: Pipeline, mode: str) -> Recipe:
    """The recipe with whether its VAE decodes in tiles, which changes the pixels: as it
    says (a reproduction's; a recipe that ran before recipes recorded tiling did not tile),
    else as the worker's ``mode`` decides for its size."""
    tiled = recipe.vae_tiling
    if tiled is None and recipe.versions is not None:
        tiled = False
    if tiled is None:
        tiled = tiling_for(shared, mode, batch_size=recipe.batch_size, width=recipe.width,
                           height=recipe.height)
    return replace(recipe, vae_tiling=tiled)


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
        folder = None if is_single_file(source) else model_dir(source)
        _latent_rgb_cache[recipe.model.hash] = latent_rgb_for(pipe, folder)
    return _latent_rgb_cache[recipe.model.hash]


def _denoise(pipe: Pipeline, recipe: Recipe, stepper: "_Stepper") -> torch.Tensor:
    """The stock pipeline's denoising loop, from this recipe's noise, to the final latents."""
    image_generators = generators(recipe.seed, recipe.batch_size)
    scale = pipe.vae_scale_factor
    shape = (
        recipe.batch_size,
        pipe.unet.config.in_channels,
        recipe.height // scale,
        recipe.width // scale,
    )
    noise = initial_noise(
        shape,
        image_generators,
        subseed=recipe.subseed,
        subseed_strength=recipe.subseed_strength,
        device=pipe.device,
        dtype=_prompt_dtype(pipe),  # what the stock pipeline draws in
    )
    stepper.start()
    latents = pipe(
        prompt=recipe.prompt,
        negative_prompt=recipe.negative_prompt or None,
        num_images_per_prompt=recipe.batch_size,
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
    if not stepper.canceled and not torch.isfinite(latents).all():
        raise GenerationError(
            f"{recipe.sampler} produced non-finite latents at {recipe.steps} steps on this model; "
            "try more steps or another sampler"
        )
    return latents


def _prompt_dtype(pipe: Pipeline) -> torch.dtype:
    """The dtype of the prompt embeddings, which the stock pipeline draws its noise in: the
    last text encoder's (SDXL's second)."""
    encoder = getattr(pipe, "text_encoder_2", None)
    return (pipe.text_encoder if encoder is None else encoder).dtype


@torch.no_grad()
def _decode(pipe: Pipeline, latents: torch.Tensor) -> list[Image.Image]:
    """The stock pipeline's decode (no safety checker, no watermark), timed apart from the
    steps."""
    image = vae_decode(pipe, latents)
    return pipe.image_processor.postprocess(
        image, output_type="pil", do_denormalize=[True] * len(image)
    )


class _Stepper:
    """The pipeline's ``callback_on_step_end``: step timings, previews and the cancel check.

    Second-order samplers call the model twice per step; a step counts when the pipeline's
    own progress bar would advance, so ``on_step`` fires exactly ``steps`` times, on the
    sampling thread: a failure in it stops the run at that step and is raised from
    ``generate``. Whatever ``on_step`` does adds to every step, so a caller with much to do
    per step does it in another process (Studio's worker does, generation/sidecar.py): a
    thread beside the loop would take turns with it at the interpreter lock.
    """

    def __init__(
        self,
        recipe: Recipe,
        on_step: OnStep | None,
        should_cancel: ShouldCancel | None,
        preview: Previews | None,
        latent_rgb: LatentRGB | None,
    ):
        self.recipe = recipe
        self.on_step = on_step
        self.should_cancel = should_cancel
        self.preview = preview if on_step is not None else None
        self.latent_rgb = latent_rgb
        self.tensor_inputs = ["noise_pred", "latent_model_input"] if self.preview else []
        self.alphas_cumprod: list[float] | None = None
        self.step = 0
        self.step_seconds: list[float] = []
        self.canceled = False

    def start(self) -> None:
        self.started = self.last = time.perf_counter()

    def __call__(self, pipe: Pipeline, i: int, t: torch.Tensor, tensors: dict) -> dict:
        if self._completes_step(pipe, i):
            self.step += 1
            now = time.perf_counter()
            self.step_seconds.append(now - self.last)
            self.last = now
            if self.on_step is not None:
                image = self._preview(pipe, t, tensors) if self.preview else None
                self.on_step(self.step, self.recipe.steps, image, now - self.started)
        if self.should_cancel is not None and self.should_cancel():
            interrupt(pipe)
            self.canceled = True
        return {}

    def _completes_step(self, pipe: Pipeline, i: int) -> bool:
        # The rule both pipelines' progress bars follow.
        order = pipe.scheduler.order
        warmup = pipe.num_timesteps - self.recipe.steps * order
        return i == pipe.num_timesteps - 1 or (i + 1 > warmup and (i + 1) % order == 0)

    def _preview(self, pipe: Pipeline, t: torch.Tensor, tensors: dict) -> StepPreview:
        if self.alphas_cumprod is None:
            self.alphas_cumprod = pipe.scheduler.alphas_cumprod.tolist()
        output = tensors["noise_pred"].float()
        model_input = tensors["latent_model_input"][-len(output) :].float()
        alpha_bar = alpha_bar_at(self.alphas_cumprod, t)
        prediction_type = pipe.scheduler.config.prediction_type
        if self.preview.vae_every and self.step % self.preview.vae_every == 0:
            x0 = x0_from(output, model_input, alpha_bar, prediction_type)
            with torch.no_grad():
                rgb = vae_decode(pipe, x0.to(pipe.vae.dtype))
            return DecodedPreview(rgb=rgb.float().cpu().numpy(), options=self.preview)
        # Copies: the pipeline owns these tensors, and the preview is rendered later.
        return LatentPreview(
            model_output=output.cpu().numpy().copy(),
            model_input=model_input.cpu().numpy().copy(),
            alpha_bar=alpha_bar,
            prediction_type=prediction_type,
            latent_rgb=self.latent_rgb,
            options=self.preview,
        )

    def timings(self, load_seconds: float) -> dict[str, Any]:
        return {"load": load_seconds, "steps": self.step_seconds}


def interrupt(pipe: Pipeline) -> None:
    """Stop the pipeline's denoising loop: it skips its remaining iterations. This is
    diffusers' documented way from a step callback, though the attribute is underscored;
    tests/generation/test_library_internals.py fails if an upgrade drops it."""
    pipe._interrupt = True


def reproduce(
    recipe: Recipe, original: Image.Image, *, pipeline: Pipeline
) -> tuple[Image.Image, Comparison]:
    """Run the recipe again and compare with ``original``.

    The whole batch runs again, at the recorded threads, so the image at ``batch_index`` can
    come out identical; a single run with seed + batch_index would only be within a level.
    ``generate`` refuses (WeightsMismatchError) when the weights are not the recipe's.
    """
    result = generate(recipe, pipeline=pipeline, preview=None)
    image = result.images[recipe.batch_index]
    return image, compare_images(original, image)
