"""Initial noise exactly as docs/architecture.md §4 fixes it, with AUTOMATIC1111's variation
seeds."""

from collections.abc import Iterable

import torch
from diffusers.utils.torch_utils import randn_tensor


def generators(seed: int, count: int) -> list[torch.Generator]:
    """One CPU generator per image, image i seeded with seed + i, as diffusers expects them."""
    return seeded(range(seed, seed + count))


def seeded(seeds: Iterable[int]) -> list[torch.Generator]:
    """One CPU generator per image, each with its own seed: a batch merged from several jobs
    (``batches.generate_batch``) gives each image its own job's seed + i."""
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def initial_noise(
    shape: tuple[int, ...],
    image_generators: list[torch.Generator],
    *,
    subseed: int,
    subseed_strength: float,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The batch's initial latents, before the scheduler scales them.

    Drawn with diffusers' own ``randn_tensor`` from ``image_generators``, as a stock pipeline
    given that generator list draws them, which also advances the generators the same way for
    the samplers that draw per-step noise from them. With a variation seed, image i's noise is
    the spherical interpolation from it towards the noise of subseed + i, as A1111 does; at
    strength 0 it is returned untouched.
    """
    noise = randn_tensor(shape, generator=image_generators, device=device, dtype=dtype)
    if subseed_strength == 0:
        return noise
    variation = randn_tensor(
        shape, generator=generators(subseed, shape[0]), device=device, dtype=dtype
    )
    blended = [
        slerp(subseed_strength, a.float(), b.float()) for a, b in zip(noise, variation, strict=True)
    ]
    return torch.stack(blended).to(dtype)


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of two noise tensors, t=0 giving ``low`` and t=1 ``high``.

    Unlike a linear blend it keeps the result's norm that of unit Gaussian noise, which the
    scheduler's first step assumes. A1111 computes the angle per row of the latent; here it is
    over the whole latent of one image, the textbook form.
    """
    cos = (low.flatten() @ high.flatten()) / (low.norm() * high.norm())
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if omega.abs() < 1e-4:  # nearly parallel: the formula divides by ~0
        return torch.lerp(low, high, t)
    return (torch.sin((1 - t) * omega) * low + torch.sin(t * omega) * high) / torch.sin(omega)
