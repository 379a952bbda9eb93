"""AUTOMATIC1111-style sampler names, each a diffusers scheduler class and config overrides.

A scheduler is built with ``from_config`` on the model's own scheduler config, so the model's
training schedule (betas, prediction type, timestep spacing) carries over; the sampler's name
decides only how it steps. The config it resolves to is recorded in the recipe in full, so a
stock scheduler class given that config steps exactly the same.
"""

import inspect
import math
from typing import Any

import diffusers
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .recipe import SchedulerRef

_KARRAS = {"use_karras_sigmas": True}
_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}

SAMPLERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "DDPM": (DDPMScheduler, {}),
    "DDIM": (DDIMScheduler, {}),
    "PNDM": (PNDMScheduler, {"skip_prk_steps": True}),  # A1111's PLMS
    "LMS": (LMSDiscreteScheduler, {}),
    "LMS Karras": (LMSDiscreteScheduler, _KARRAS),
    "Heun": (HeunDiscreteScheduler, {}),
    "Euler": (EulerDiscreteScheduler, {}),
    "Euler a": (EulerAncestralDiscreteScheduler, {}),
    "DPM2": (KDPM2DiscreteScheduler, {}),
    "DPM2 a": (KDPM2AncestralDiscreteScheduler, {}),
    "DPM++ 2M": (DPMSolverMultistepScheduler, _DPMPP_2M),
    "DPM++ 2M Karras": (DPMSolverMultistepScheduler, {**_DPMPP_2M, **_KARRAS}),
    "DPM++ SDE Karras": (DPMSolverSDEScheduler, _KARRAS),
    "DPM++ 2M SDE": (
        DPMSolverMultistepScheduler,
        {**_DPMPP_2M, "algorithm_type": "sde-dpmsolver++"},
    ),
    "UniPC": (UniPCMultistepScheduler, {}),
    "DEIS": (DEISMultistepScheduler, {}),
}

# How sigmas are spaced belongs to the sampler's name, not to the model: a model saved with
# a Karras scheduler must not turn "Euler" into Euler Karras.
_SPACING_KEYS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas")

# StableDiffusionPipeline rewrites these on construction (deprecated values); setting them
# here keeps the recorded config the one that runs.
_PIPELINE_FIXED = {"steps_offset": 1, "clip_sample": False}

# The floor for the schedule's last alpha-bar, the value diffusers itself uses for
# zero-terminal-SNR schedules (`rescale_betas_zero_snr`): sigma_max = 4096 instead of infinity.
TERMINAL_ALPHA_BAR = 2.0**-24


def make_scheduler(
    name: str, base_config: dict[str, Any], seed: int, batch_size: int = 1
) -> SchedulerMixin:
    """A fresh scheduler for sampler ``name`` on the model whose scheduler config is given.

    1. Start from the model's config, less its sigma spacing.
    2. Replace the training betas by ``sampling_betas`` where the schedule reaches zero SNR.
    3. Apply the sampler's overrides, and per-image Brownian seeds for the SDE sampler.
    """
    if name not in SAMPLERS:
        raise KeyError(f"unknown sampler {name!r}")
    cls, overrides = SAMPLERS[name]
    config = {k: v for k, v in base_config.items() if k not in _SPACING_KEYS}
    options = {**_PIPELINE_FIXED, **sampling_betas(config), **overrides}
    if cls is DPMSolverSDEScheduler:
        # One Brownian tree per image, seeded like its initial noise, so image i of a batch
        # takes the same path as a single run with seed + i.
        options["noise_sampler_seed"] = [seed + i for i in range(batch_size)]
    # Passed as keyword arguments: from_config skips config keys listed in the base config's
    # `_use_default_values`, which would silently drop an override of such a key.
    return cls.from_config(config, **_accepted(cls, options))


def sampling_betas(config: dict[str, Any]) -> dict[str, Any]:
    """Explicit betas with the last alpha-bar floored at TERMINAL_ALPHA_BAR; {} if not needed.

    A zero-terminal-SNR schedule (cosine, or `rescale_betas_zero_snr`) has alpha-bar ~0 at the
    last training step, so sigma there is ~infinite (2e4 for squaredcos_cap_v2). Schedulers
    that step in sigma break on it: DPM2 a's up/down sigmas become NaN, Heun overshoots, and
    Karras spacing piles steps onto the same timestep (DPM++ 2M Karras: IndexError). Schedulers
    that support `rescale_betas_zero_snr` already floor the last alpha-bar at this value, but
    only for themselves and only when rescaling. Expressing the floor as `trained_betas` fixes
    the schedule itself, for every scheduler alike, in a config a stock scheduler reads.
    """
    betas = DDPMScheduler.from_config(config).betas.clone()
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    if alphas_cumprod[-1] >= TERMINAL_ALPHA_BAR:
        return {}
    betas[-1] = 1.0 - TERMINAL_ALPHA_BAR / alphas_cumprod[-2]
    # The betas are now final: no scheduler may rescale them again.
    return {"trained_betas": betas.tolist(), "rescale_betas_zero_snr": False}


def _accepted(cls: type[SchedulerMixin], options: dict[str, Any]) -> dict[str, Any]:
    parameters = inspect.signature(cls.__init__).parameters
    return {key: value for key, value in options.items() if key in parameters}


def scheduler_ref(scheduler: SchedulerMixin) -> SchedulerRef:
    """The class name and full config, as the recipe records them: every value explicit, so a
    later diffusers with other defaults still builds the same scheduler.

    JSON has no infinities (Postgres refuses them, and so do strict readers of a PNG's
    recipe), yet some defaults are one: DPM-Solver's `lambda_min_clipped` is -inf. Such a value
    is left out when it is the class's default, which `from_config` then restores."""
    cls = type(scheduler)
    defaults = inspect.signature(cls.__init__).parameters
    config = {}
    for key, value in scheduler.config.items():
        if key.startswith("_"):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            default = defaults[key].default if key in defaults else None
            if value == default:
                continue
            raise ValueError(f"{cls.__name__}.{key} = {value} cannot be recorded in a recipe")
        config[key] = value
    return SchedulerRef(class_name=cls.__name__, config=config)


def scheduler_class(name: str) -> type[SchedulerMixin] | None:
    cls = getattr(diffusers, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, SchedulerMixin) else None


def scheduler_from_ref(ref: SchedulerRef) -> SchedulerMixin:
    """The scheduler a recipe recorded, built with the stock class from its config."""
    cls = scheduler_class(ref.class_name)
    if cls is None:
        raise KeyError(f"{ref.class_name!r} is not a diffusers scheduler")
    return cls.from_config(ref.config)
