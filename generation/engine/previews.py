"""Step previews: the model's current estimate of the clean image, small and cheap.

Each step the UNet predicts noise, v or x0; from it, its input and the schedule the engine
computes x0, the clean latent the model is heading for (the noisy latent would show only
static early on). A linear latent-to-RGB projection turns x0 into colours: the known factors
for the SD 1.x/2.x and SDXL VAEs, or one fitted per model by least squares against its VAE's
decodes, stored next to a folder model (a single file's is kept in memory). A full VAE decode
can replace it every N steps.

The sampling loop only copies what a preview needs (``LatentPreview``); turning it into a
picture (``render``) is left to whoever shows it, so that work can run beside the loop,
even in another process, instead of between its steps.
"""

import contextlib
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image

LATENT_RGB_FILE = "latent_rgb.json"

Array = TypeVar("Array", np.ndarray, torch.Tensor)
Pipeline = StableDiffusionPipeline | StableDiffusionXLPipeline


@dataclass(frozen=True)
class Previews:
    """How ``generate`` makes its per-step previews."""

    vae_every: int = 0  # decode x0 with the VAE every N steps instead (0: never)
    max_size: int = 256  # longest side, in pixels, of one image of the batch
    format: str = "WEBP"
    quality: int = 80


DEFAULT_PREVIEWS = Previews()


@dataclass(frozen=True)
class LatentRGB:
    """rgb = latent @ weights + bias, per latent pixel, in the VAE's [-1, 1] output range."""

    weights: tuple[tuple[float, ...], ...]  # one (r, g, b) row per latent channel
    bias: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def project(self, latents: np.ndarray) -> np.ndarray:
        """(B, C, h, w) latents to (B, 3, h, w) colours."""
        weights = np.asarray(self.weights, dtype=np.float32)
        bias = np.asarray(self.bias, dtype=np.float32)[None, :, None, None]
        return np.einsum("bchw,cr->brhw", latents, weights) + bias


# ComfyUI's factors (comfy/latent_formats.py) for the SD VAEs (x8, 4 channels), keyed by
# the VAE's scaling factor.
KNOWN_LATENT_RGB = {
    0.18215: LatentRGB(  # SD 1.x and 2.x
        weights=(
            (0.3512, 0.2297, 0.3227),
            (0.3250, 0.4974, 0.2350),
            (-0.2829, 0.1762, 0.2721),
            (-0.2120, -0.2616, -0.7177),
        )
    ),
    0.13025: LatentRGB(  # SDXL
        weights=(
            (0.3651, 0.4232, 0.4341),
            (-0.2533, -0.0042, 0.1068),
            (0.1076, 0.1111, -0.0362),
            (-0.3165, -0.2492, -0.2188),
        ),
        bias=(0.1084, -0.0175, -0.0011),
    ),
}


def alpha_bar_at(alphas_cumprod: Sequence[float], t: float) -> float:
    """The schedule's alpha-bar at a timestep; fractional timesteps (Karras sigmas)
    interpolate, close enough for a preview."""
    t = float(t)
    last = len(alphas_cumprod) - 1
    low = min(int(t), last)
    high = min(low + 1, last)
    a, b = float(alphas_cumprod[low]), float(alphas_cumprod[high])
    return a + (b - a) * (t - low)


def x0_from(model_output: Array, model_input: Array, alpha_bar: float,
            prediction_type: str) -> Array:
    """The clean latent from one model call, for float32 numpy arrays or torch tensors alike.

    ``model_input`` is what the UNet saw: the scheduler scales sigma-space samples back to
    the training parameterisation x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, so one formula serves
    every scheduler. With guidance the input holds the unconditional and conditional copies
    of the same latents; the output is already guided.
    """
    x_t = model_input[-model_output.shape[0] :]
    a, s = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    if prediction_type == "v_prediction":
        return a * x_t - s * model_output
    if prediction_type == "epsilon":
        # At zero terminal SNR a is ~0 and x0 is undefined; keep the first preview finite.
        return (x_t - s * model_output) / max(a, 1e-3)
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"unknown prediction type {prediction_type!r}")


@dataclass(frozen=True)
class LatentPreview:
    """One step's preview as the sampling loop hands it over: the model's output and input
    (copies, a few kilobytes), not yet a picture. ``render`` makes the picture, in numpy
    and PIL: whoever shows the preview pays for it, on its own thread or in another process
    (it pickles), and the loop only for the copies."""

    model_output: np.ndarray  # float32, (B, C, h, w), guided
    model_input: np.ndarray  # float32, (B or 2B, C, h, w)
    alpha_bar: float
    prediction_type: str
    latent_rgb: LatentRGB
    options: Previews

    @property
    def batch_size(self) -> int:
        return len(self.model_output)

    def render(self, index: int | None = None) -> bytes:
        """The whole batch side by side, or only the image at ``index`` of it."""
        output = self.model_output
        model_input = self.model_input[-len(output) :]
        if index is not None:
            output, model_input = one_of(output, index), one_of(model_input, index)
        x0 = x0_from(output, model_input, self.alpha_bar, self.prediction_type)
        return encode(self.latent_rgb.project(x0), self.options)


@dataclass(frozen=True)
class DecodedPreview:
    """A step's x0 decoded by the VAE (``Previews.vae_every``), in [-1, 1], not yet encoded."""

    rgb: np.ndarray  # float32, (B, 3, H, W)
    options: Previews

    @property
    def batch_size(self) -> int:
        return len(self.rgb)

    def render(self, index: int | None = None) -> bytes:
        """The whole batch side by side, or only the image at ``index`` of it."""
        return encode(self.rgb if index is None else one_of(self.rgb, index), self.options)


def one_of(batch: np.ndarray, index: int) -> np.ndarray:
    """The batch's image at ``index``, still a batch (of one). An index outside the batch is
    an error, never an empty picture."""
    if not 0 <= index < len(batch):
        raise IndexError(f"image {index} of a batch of {len(batch)}")
    return batch[index : index + 1]


StepPreview = LatentPreview | DecodedPreview


def encode(images: np.ndarray, options: Previews) -> bytes:
    """Images in [-1, 1] (B, 3, h, w) as one small picture, the batch side by side.

    Projected latents are encoded at the latent resolution, all the detail they hold; the
    browser scales them up. Larger images (VAE decodes) shrink to ``options.max_size``.
    """
    strip = np.concatenate(list(images), axis=2)
    pixels = ((np.clip(strip, -1, 1) + 1) * 127.5).round().astype(np.uint8)
    picture = Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)))
    height, width = images.shape[2:]
    if max(height, width) > options.max_size:
        scale = options.max_size / max(height, width)
        size = (round(width * scale) * len(images), max(1, round(height * scale)))
        picture = picture.resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    # method 0 is WebP's fastest: a tenth of a millisecond for a 16x16 latent.
    picture.save(buffer, format=options.format, quality=options.quality, method=0)
    return buffer.getvalue()


def vae_decode(pipe: Pipeline, latents: torch.Tensor) -> torch.Tensor:
    """Latents to images in [-1, 1], as the pipeline's own ``__call__`` decodes them.

    SDXL's pipeline differs from SD's in two ways: a VAE marked ``force_upcast`` decodes in
    float32 when the model runs in float16 (it overflows there), and latents are
    denormalised with the VAE's ``latents_mean`` and ``latents_std`` where it has them.
    """
    vae = pipe.vae
    if not isinstance(pipe, StableDiffusionXLPipeline):
        return vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    upcast = vae.dtype == torch.float16 and vae.config.force_upcast
    if upcast:
        vae.to(dtype=torch.float32)
        latents = latents.float()
    stats = _latent_stats(pipe, latents)
    if stats is None:
        latents = latents / vae.config.scaling_factor
    else:
        latents = latents * stats[1] / vae.config.scaling_factor + stats[0]
    try:
        return vae.decode(latents, return_dict=False)[0]
    finally:
        if upcast:
            vae.to(dtype=torch.float16)


def _latent_stats(pipe: Pipeline, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """An SDXL VAE's per-channel latent mean and std, where its config has them."""
    config = pipe.vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if not isinstance(pipe, StableDiffusionXLPipeline) or mean is None or std is None:
        return None
    shape = (1, len(mean), 1, 1)
    return (torch.tensor(mean).view(shape).to(like.device, like.dtype),
            torch.tensor(std).view(shape).to(like.device, like.dtype))


def vae_encode(pipe: Pipeline, images: torch.Tensor) -> torch.Tensor:
    """Images to the latents the sampler works in: the inverse of ``vae_decode``."""
    latents = pipe.vae.encode(images).latent_dist.mean
    stats = _latent_stats(pipe, latents)
    if stats is None:
        return latents * pipe.vae.config.scaling_factor
    return (latents - stats[0]) * pipe.vae.config.scaling_factor / stats[1]


@torch.no_grad()
def fit_latent_rgb(
    pipe: Pipeline, count: int = 48, latent_size: int = 16
) -> LatentRGB:
    """Least-squares latent-to-RGB projection for this model's VAE.

    1. Make ``count`` smooth random colour fields (blurred 4x4 grids of colours), the kind of
       image whose latents a linear map can render.
    2. Encode them with the VAE to get realistic latents, and decode those: the target is what
       the VAE itself would show, pooled down to one colour per latent pixel.
    3. Solve rgb = [latent, 1] @ A for A.
    """
    generator = torch.Generator("cpu").manual_seed(0)
    size = latent_size * pipe.vae_scale_factor
    grid = torch.rand(count, 3, 4, 4, generator=generator) * 2 - 1
    images = torch.nn.functional.interpolate(grid, size=(size, size), mode="bicubic").clamp(-1, 1)
    images = images.to(pipe.device, pipe.vae.dtype)
    latents = vae_encode(pipe, images)
    decoded = vae_decode(pipe, latents).float()
    target = torch.nn.functional.avg_pool2d(decoded, pipe.vae_scale_factor)
    x = latents.float().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    x = torch.cat([x, torch.ones(len(x), 1, device=x.device)], dim=1)
    y = target.permute(0, 2, 3, 1).reshape(-1, 3)
    solution = torch.linalg.lstsq(x.cpu(), y.cpu()).solution
    return LatentRGB(
        weights=tuple(tuple(row) for row in solution[:-1].tolist()),
        bias=tuple(solution[-1].tolist()),
    )


def latent_rgb_for(pipe: Pipeline, model_path: Path | None) -> LatentRGB:
    """The model's projection: the known factors, else one stored next to the model, else a
    new fit, stored there when ``model_path`` is a writable local directory. A single-file
    checkpoint has no folder of its own (``model_path`` None): its fit is kept in memory
    by the caller, never written beside the file."""
    known = KNOWN_LATENT_RGB.get(round(pipe.vae.config.scaling_factor, 5))
    if known is not None and pipe.vae_scale_factor == 8 and pipe.vae.config.latent_channels == 4:
        return known
    stored = model_path / LATENT_RGB_FILE if model_path else None
    if stored and stored.is_file():
        data = json.loads(stored.read_text())
        return LatentRGB(weights=tuple(map(tuple, data["weights"])), bias=tuple(data["bias"]))
    fitted = fit_latent_rgb(pipe)
    if stored:
        # a read-only model directory: fit again in the next process, a second's work
        with contextlib.suppress(OSError):
            stored.write_text(json.dumps(asdict(fitted), indent=1) + "\n")
    return fitted


def preview_part(preview: StepPreview, start: int, size: int) -> StepPreview:
    """The preview of `size` images from `start` of the batch, alone (each job's part of a
    batch that merged several: generation/sidecar.py)."""
    if isinstance(preview, DecodedPreview):
        return replace(preview, rgb=preview.rgb[start:start + size])
    # The model's input holds the batch twice under classifier-free guidance: the images'
    # own rows are its last batch_size (LatentPreview.render reads them so).
    own_input = preview.model_input[-preview.batch_size:]
    return replace(preview, model_output=preview.model_output[start:start + size],
                   model_input=own_input[start:start + size])
