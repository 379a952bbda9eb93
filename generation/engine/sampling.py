"""Running a recipe: the stock diffusers pipeline, with a step callback for previews, timings
and cancel, and the initial noise drawn exactly as docs/architecture.md §4 fixes it."""

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .comparison import Comparison, compare_images
from .models import StudioPipeline, load_pipeline, pipeline_spec, resolve_device
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
    pipeline: StudioPipeline | None = None,
    on_step: OnStep | None = None,
    should_cancel: ShouldCancel | None = None,
    preview: Previews | None = DEFAULT_PREVIEWS,
) -> Result:
    """Make the recipe's images.

    1. Load the pipeline unless given, validate the recipe against it and check that the
       weights are the ones the recipe names.
    2. Resolve what only this run knows: the scheduler, device, dtype, threads, versions.
    3. Draw the initial noise and run the stock pipeline; after each step the callback reports
       ``on_step(step, total, preview, elapsed)`` and checks ``should_cancel()``. The preview
       is a StepPreview: its ``render()`` gives the picture's bytes. ``on_step`` runs on the
       sampling thread, between steps: a caller with much to do per step hands it on (Studio's
       worker sends it to another process, generation/sidecar.py).
    4. Unless canceled, decode the latents: one image and one recipe per batch index.
    """
    started = time.perf_counter()
    if pipeline is None:
        device, dtype = resolve_device(recipe.device or "auto")
        pipeline = load_pipeline(recipe.model.source, device=device, dtype=dtype)
    loaded = time.perf_counter()
    validate_recipe(recipe, pipeline_spec(pipeline))
    recipe = _with_checked_hash(recipe)
    pipe = _run_pipeline(recipe, pipeline)
    recipe = _resolved(recipe, pipe)
    stepper = _Stepper(recipe, on_step, should_cancel, preview, _latent_rgb(recipe, pipe, preview))
    if should_cancel is not None and should_cancel():
        return Result(
            images=[], recipes=[], timings=stepper.timings(loaded - started), canceled=True
        )
    with pinned_threads(recipe.threads):
        latents = _denoise(pipe, recipe, stepper)
        if stepper.canceled:
            return Result(
                images=[], recipes=[], timings=stepper.timings(loaded - started), canceled=True
            )
        decode_started = time.perf_counter()
        images = _decode(pipe, latents)
    timings = stepper.timings(loaded - started)
    timings["decode"] = time.perf_counter() - decode_started
    timings["total"] = time.perf_counter() - started
    recipes = [recipe.with_batch_index(i) for i in range(recipe.batch_size)]
    return Result(images=images, recipes=recipes, timings=timings)


def _with_checked_hash(recipe: Recipe) -> Recipe:
    actual = weights_hash(recipe.model.source)
    if recipe.model.hash and recipe.model.hash != actual:
        raise WeightsMismatchError(
            f"model {recipe.model.name!r} at {recipe.model.source} has weights {actual[:12]}, "
            f"but the recipe was made with {recipe.model.hash[:12]}: it cannot be reproduced"
        )
    return replace(recipe, model=replace(recipe.model, hash=actual))


def _run_pipeline(recipe: Recipe, shared: StudioPipeline) -> StudioPipeline:
    """A view of the shared pipeline with this run's own scheduler: nothing shared changes."""
    if recipe.scheduler is not None:
        scheduler = scheduler_from_ref(recipe.scheduler)
    else:
        scheduler = make_scheduler(
            recipe.sampler, shared.scheduler.config, recipe.seed, recipe.batch_size
        )
    pipe = StudioPipeline(
        **{**shared.components, "scheduler": scheduler}, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _resolved(recipe: Recipe, pipe: StudioPipeline) -> Recipe:
    # One UNet weight tells device and dtype; the pipeline's own `device` and `dtype`
    # properties walk every module, milliseconds a run.
    weight = next(pipe.unet.parameters())
    return replace(
        recipe,
        scheduler=scheduler_ref(pipe.scheduler),
        dtype=str(weight.dtype).removeprefix("torch."),
        device=weight.device.type,
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


_latent_rgb_cache: dict[Path, LatentRGB] = {}


def _latent_rgb(recipe: Recipe, pipe: StudioPipeline, preview: Previews | None) -> LatentRGB | None:
    """The model's latent-to-RGB projection, found or fitted once per model per process."""
    if preview is None:
        return None
    path = model_dir(recipe.model.source)
    if path not in _latent_rgb_cache:
        _latent_rgb_cache[path] = latent_rgb_for(pipe, path)
    return _latent_rgb_cache[path]


def _denoise(pipe: StudioPipeline, recipe: Recipe, stepper: "_Stepper") -> torch.Tensor:
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
        dtype=pipe.text_encoder.dtype,  # what the stock pipeline draws in
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


@torch.no_grad()
def _decode(pipe: StudioPipeline, latents: torch.Tensor) -> list[Image.Image]:
    """The stock pipeline's decode (there is no safety checker), timed apart from the steps."""
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
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

    def __call__(self, pipe: StudioPipeline, i: int, t: torch.Tensor, tensors: dict) -> dict:
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

    def _completes_step(self, pipe: StudioPipeline, i: int) -> bool:
        # The rule StableDiffusionPipeline's progress bar follows.
        order = pipe.scheduler.order
        warmup = pipe.num_timesteps - self.recipe.steps * order
        return i == pipe.num_timesteps - 1 or (i + 1 > warmup and (i + 1) % order == 0)

    def _preview(self, pipe: StudioPipeline, t: torch.Tensor, tensors: dict) -> StepPreview:
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


def interrupt(pipe: StudioPipeline) -> None:
    """Stop the pipeline's denoising loop: it skips its remaining iterations. This is
    diffusers' documented way from a step callback, though the attribute is underscored;
    tests/generation/test_library_internals.py fails if an upgrade drops it."""
    pipe._interrupt = True


def reproduce(
    recipe: Recipe, original: Image.Image, *, pipeline: StudioPipeline
) -> tuple[Image.Image, Comparison]:
    """Run the recipe again and compare with ``original``.

    The whole batch runs again, at the recorded threads, so the image at ``batch_index`` can
    come out identical; a single run with seed + batch_index would only be within a level.
    ``generate`` refuses (WeightsMismatchError) when the weights are not the recipe's.
    """
    result = generate(recipe, pipeline=pipeline, preview=None)
    image = result.images[recipe.batch_index]
    return image, compare_images(original, image)
