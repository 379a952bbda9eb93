"""The step callback every pass of a run shares: step timings, previews and the cancel check
(docs/engine.md, "A run, top to bottom")."""

import time
from collections.abc import Callable
from typing import Any

import torch

from .inputs import steps_run
from .models import Pipeline
from .previews import (
    DecodedPreview,
    LatentPreview,
    LatentRGB,
    Previews,
    StepPreview,
    alpha_bar_at,
    vae_decode,
    x0_from,
)
from .recipe import Recipe

OnStep = Callable[[int, int, StepPreview | None, float], None]
ShouldCancel = Callable[[], bool]


class Stepper:
    """The pipelines' ``callback_on_step_end``: step timings, previews and the cancel check.

    Second-order samplers call the model twice per step; a step counts when the pipeline's
    own progress bar would advance, so ``on_step`` fires exactly ``steps_run(recipe)`` times
    over all of a run's passes (a hires fix has two; img2img runs ``int(steps * strength)``),
    on the sampling thread: a failure in it stops the run at that step and is raised from
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
        self.total = steps_run(recipe)
        self.on_step = on_step
        self.should_cancel = should_cancel
        self.preview = preview if on_step is not None else None
        self.latent_rgb = latent_rgb
        self.tensor_inputs = ["noise_pred", "latent_model_input"] if self.preview else []
        self.alphas_cumprod: list[float] | None = None
        self.pass_steps = recipe.steps
        self.decoder: Pipeline | None = None
        self.step = 0
        self.step_seconds: list[float] = []
        self.canceled = False

    def start(self) -> None:
        self.started = self.last = time.perf_counter()

    def begin_pass(self, steps: int, decoder: Pipeline) -> None:
        """A pass that runs ``steps`` steps; its decoded previews decode with ``decoder``
        (the text-to-image view, which knows its family's VAE: ``previews.vae_decode``)."""
        self.pass_steps = steps
        self.decoder = decoder
        self.alphas_cumprod = None

    def __call__(self, pipe: Pipeline, i: int, t: torch.Tensor, tensors: dict) -> dict:
        if self._completes_step(pipe, i):
            self.step += 1
            now = time.perf_counter()
            self.step_seconds.append(now - self.last)
            self.last = now
            if self.on_step is not None:
                image = self._preview(pipe, t, tensors) if self.preview else None
                self.on_step(self.step, self.total, image, now - self.started)
        if self.should_cancel is not None and self.should_cancel():
            interrupt(pipe)
            self.canceled = True
        return {}

    def _completes_step(self, pipe: Pipeline, i: int) -> bool:
        # The rule every pipeline's progress bar follows, with the steps this pass runs.
        order = pipe.scheduler.order
        warmup = pipe.num_timesteps - self.pass_steps * order
        return i == pipe.num_timesteps - 1 or (i + 1 > warmup and (i + 1) % order == 0)

    def _preview(self, pipe: Pipeline, t: torch.Tensor, tensors: dict) -> StepPreview:
        if self.alphas_cumprod is None:
            self.alphas_cumprod = pipe.scheduler.alphas_cumprod.tolist()
        output = tensors["noise_pred"].float()
        # The latents' channels: a 9-channel inpainting UNet also reads the mask and the
        # masked image's latents, after them.
        model_input = tensors["latent_model_input"][-len(output) :, : output.shape[1]].float()
        alpha_bar = alpha_bar_at(self.alphas_cumprod, t)
        prediction_type = pipe.scheduler.config.prediction_type
        if self.preview.vae_every and self.step % self.preview.vae_every == 0:
            x0 = x0_from(output, model_input, alpha_bar, prediction_type)
            decoder = self.decoder or pipe
            with torch.no_grad():
                rgb = vae_decode(decoder, x0.to(decoder.vae.dtype))
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
