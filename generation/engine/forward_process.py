"""The forward process made visible: one picture noised to chosen timesteps in one step each,
x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε, in the model's own latent space, and each x_t decoded (the
/learn/ page's second panel, docs/engine.md "The forward process").

1. The picture is cropped to a square and resized to the model's native size, as the
   img2img pipeline's own image processor does (``resize_mode="crop"``): the size its VAE
   (and a compiled decoder) expects.
2. x₀ is the VAE posterior's mean, scaled as the sampler's latents are
   (``previews.vae_encode``, the inverse of the decode every run uses).
3. ε is drawn once, from a CPU generator seeded with ``seed`` (diffusers' ``randn_tensor``,
   as every run draws its noise), so the same seed gives the same frames on any device, and
   every t shares it: the frames differ only in how much of each they hold.
4. ᾱ_t is the pipeline's scheduler's own ``alphas_cumprod``; each x_t is decoded as a run's
   final latents are (``image_runs.decode``), one at a time.
"""

import base64
import io
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from .errors import GenerationError
from .image_runs import decode
from .models import Pipeline, execution_device, in_use, pipeline_spec
from .previews import vae_encode
from .sampling import pinned_threads


@dataclass(frozen=True)
class ForwardFrames:
    """x_t decoded at each timestep asked for, in that order, beside ᾱ_t."""

    timesteps: list[int]
    alpha_bars: list[float]
    images: list[Image.Image]
    size: int  # the side of the square x₀ was encoded at: the model's native size
    train_steps: int  # T: the scheduler's timesteps are 0 … T − 1
    seconds: float


def scheduler_alpha_bars(pipe: Pipeline) -> torch.Tensor:
    """The scheduler's ᾱ_t for t = 0 … T − 1 (float32, on the CPU). Every diffusers
    scheduler Studio runs keeps them as ``alphas_cumprod``."""
    values = getattr(pipe.scheduler, "alphas_cumprod", None)
    if not isinstance(values, torch.Tensor):
        raise GenerationError(
            f"the scheduler {type(pipe.scheduler).__name__} keeps no alphas_cumprod")
    return values.detach().float().cpu()


def noised(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """The forward process in one step: √ᾱ·x₀ + √(1 − ᾱ)·ε."""
    return math.sqrt(alpha_bar) * x0 + math.sqrt(1.0 - alpha_bar) * noise


@torch.no_grad()
def forward_frames(pipe: Pipeline, image: Image.Image, *, timesteps: Sequence[int],
                   seed: int, threads: int | None = None,
                   on_frame: Callable[[int, int], None] | None = None) -> ForwardFrames:
    """The picture's x_t at each of ``timesteps``, decoded (the module's steps 1-4).
    ValueError for a timestep outside 0 … T − 1. ``threads`` pins torch's intra-op threads
    for the run (None: as they are); ``on_frame(done, total)`` runs after each decode."""
    started = time.perf_counter()
    schedule = scheduler_alpha_bars(pipe)
    steps = len(schedule)
    outside = [t for t in timesteps if not 0 <= t < steps]
    if outside:
        raise ValueError(f"timesteps {outside} are outside 0 … {steps - 1}")
    size = pipeline_spec(pipe).native_size
    with in_use(pipe), pinned_threads(threads) if threads else nullcontext():
        x0 = encode(pipe, image, size)
        noise = randn_tensor(x0.shape, generator=torch.Generator("cpu").manual_seed(seed),
                             device=x0.device, dtype=torch.float32)
        chosen = [float(schedule[t]) for t in timesteps]
        images = []
        for alpha_bar in chosen:
            images.append(decode(pipe, noised(x0, noise, alpha_bar).to(pipe.vae.dtype))[0])
            if on_frame is not None:
                on_frame(len(images), len(chosen))
    return ForwardFrames(timesteps=list(timesteps), alpha_bars=chosen, images=images, size=size,
                         train_steps=steps, seconds=time.perf_counter() - started)


@torch.no_grad()
def encode(pipe: Pipeline, image: Image.Image, size: int) -> torch.Tensor:
    """x₀: the picture cropped to a square of ``size`` and encoded (float32, on the device
    the pipeline computes on). An SDXL VAE marked ``force_upcast`` encodes in float32 when
    the model runs in float16, as SDXL's img2img pipeline does (it overflows in half)."""
    pixels = pipe.image_processor.preprocess(image.convert("RGB"), height=size, width=size,
                                             resize_mode="crop")
    vae = pipe.vae
    upcast = (isinstance(pipe, StableDiffusionXLPipeline) and vae.dtype == torch.float16
              and vae.config.force_upcast)
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        pixels = pixels.to(device=execution_device(pipe), dtype=vae.dtype)
        return vae_encode(pipe, pixels).float()
    finally:
        if upcast:
            vae.to(dtype=torch.float16)


def frame_data_url(image: Image.Image, *, max_size: int = 256, quality: int = 90) -> str:
    """A frame for a web page: at most ``max_size`` a side (never enlarged), as a WebP
    data: URL, as step previews are sent (``previews.Previews``)."""
    if max(image.size) > max_size:
        image = image.copy()
        image.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="WEBP", quality=quality)
    return "data:image/webp;base64," + base64.b64encode(out.getvalue()).decode("ascii")
