"""The diffusers schedulers behind AUTOMATIC1111-style sampler names (``sampler_names.py``).

A scheduler is built with ``from_config`` on the model's own scheduler config, so the model's
training schedule (betas, prediction type, timestep spacing) carries over; the sampler's name
decides how it steps, and on a zero-terminal-SNR schedule also where (``sampling_betas``,
``sampling_spacing``). The config it resolves to is recorded in the recipe in full, so a
stock scheduler class given that config steps exactly the same. A recorded config read back
from elsewhere is built only once ``schedules.check_scheduler`` has matched it to that
resolution. This half imports torch and diffusers; the web tier never loads it.
"""

import functools
import inspect
import json
import math
import sys
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import DDPMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .recipe import SchedulerRef
from .sampler_names import SAMPLERS, SEEDED_CLASS, SEEDS_KEY, per_image_seeds

# How sigmas are spaced belongs to the sampler's name, not to the model: a model saved with
# a Karras scheduler must not turn "Euler" into Euler Karras.
_SPACING_KEYS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas")

# StableDiffusionPipeline rewrites these on construction (deprecated values); setting them
# here keeps the recorded config the one that runs.
_PIPELINE_FIXED = {"steps_offset": 1, "clip_sample": False}

# The floor for the schedule's last alpha-bar, the value diffusers itself uses for
# zero-terminal-SNR schedules (`rescale_betas_zero_snr`): sigma_max = 4096 instead of infinity.
TERMINAL_ALPHA_BAR = 2.0**-24

# The schedulers whose second-order step is a straight line in sigma: Karras et al.'s Heun and
# k-diffusion's DPM2 and DPM2 a (`sampling_spacing`).
SECOND_ORDER_IN_SIGMA = frozenset(
    {"HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"}
)


def make_scheduler(
    name: str, base_config: dict[str, Any], seed: int, batch_size: int = 1
) -> SchedulerMixin:
    """A fresh scheduler for sampler ``name`` on the model whose scheduler config is given.

    1. Start from the model's config, less its sigma spacing.
    2. Replace the training betas by ``sampling_betas`` where the schedule reaches zero SNR,
       and there start a second-order-in-sigma sampler below the top (``sampling_spacing``).
    3. Apply the sampler's overrides, and per-image Brownian seeds for the SDE sampler.
    """
    if name not in SAMPLERS:
        raise KeyError(f"unknown sampler {name!r}")
    class_name, overrides = SAMPLERS[name]
    cls = scheduler_class(class_name)
    config = {k: v for k, v in base_config.items() if k not in _SPACING_KEYS}
    options = {
        **_PIPELINE_FIXED,
        **sampling_betas(config),
        **sampling_spacing(class_name, config),
        **overrides,
    }
    if class_name == SEEDED_CLASS:
        options[SEEDS_KEY] = per_image_seeds(seed, batch_size)
    # Passed as keyword arguments: from_config skips config keys listed in the base config's
    # `_use_default_values`, which would silently drop an override of such a key.
    return _from_the_first_step(cls.from_config(config, **_accepted(cls, options)))


def _from_the_first_step(scheduler: SchedulerMixin) -> SchedulerMixin:
    """Make the scheduler start every run at its first step, even when timesteps repeat.

    A sigma-stepping scheduler finds where it is by looking its first timestep up in its
    schedule, and takes the second match when it repeats (meant for img2img). Karras
    spacing on a zero-terminal-SNR schedule puts its first few sigmas (4096, 2971, 2122 …)
    all between the last two training steps; DPM-Solver truncates cosine-schedule timesteps
    to integers, and whether the first one lands on 999 or 998 hangs on the last bits of a
    float (998.99999976 on one build machine, not on the ones before). On 998, the run
    started a step late and ran off the end of its sigmas (IndexError). Pinning the begin
    index, as diffusers' img2img pipelines do, makes the lookup moot; the pipeline calls
    ``set_timesteps`` once per run, which clears it, so it is set again right after.
    Schedulers without step indices are left alone.
    """
    if not hasattr(scheduler, "set_begin_index"):
        return scheduler
    set_timesteps = scheduler.set_timesteps

    # wraps: pipelines inspect set_timesteps' signature (custom timesteps or sigmas). A copy
    # of the scheduler would still drive the original: build another from the ref instead.
    @functools.wraps(set_timesteps)
    def set_timesteps_from_the_first(*args, **kwargs):
        set_timesteps(*args, **kwargs)
        scheduler.set_begin_index(0)

    scheduler.set_timesteps = set_timesteps_from_the_first
    return scheduler


def resolve_all(base_config: dict[str, Any]) -> dict[str, Any]:
    """What every sampler resolves to on the model with this scheduler config, as JSON for
    ``schedules.resolutions``: {"refs": {name: ref}, "defaults": {class name: defaults}}.

    The seeded sampler is resolved for seed 0 alone; ``schedules.resolved_ref`` puts a run's
    seeds in. The defaults are those of the keys each class records, for ``check_scheduler``.
    """
    refs, defaults = {}, {}
    for name in SAMPLERS:
        ref = scheduler_ref(make_scheduler(name, base_config, seed=0))
        refs[name] = {"class_name": ref.class_name, "config": ref.config}
        parameters = inspect.signature(scheduler_class(ref.class_name).__init__).parameters
        defaults[ref.class_name] = {
            key: parameters[key].default for key in ref.config
            if key in parameters and parameters[key].default is not inspect.Parameter.empty
        }
    return {"refs": refs, "defaults": defaults}


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
    floored = _floored_betas(json.dumps(config, sort_keys=True))
    if floored is None:
        return {}
    # The betas are now final: no scheduler may rescale them again.
    return {"trained_betas": list(floored), "rescale_betas_zero_snr": False}


@functools.lru_cache(maxsize=32)
def _floored_betas(config_json: str) -> tuple[float, ...] | None:
    """`sampling_betas`' betas, once per model config: building the schedule and writing it
    short took 5 ms, and the SDE sampler's scheduler, seeded per submission, needs them on
    every submission."""
    betas = DDPMScheduler.from_config(json.loads(config_json)).betas.clone()
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    if alphas_cumprod[-1] >= TERMINAL_ALPHA_BAR:
        return None
    betas[-1] = 1.0 - TERMINAL_ALPHA_BAR / alphas_cumprod[-2]
    return tuple(shortest_float32(betas))


def sampling_spacing(class_name: str, config: dict[str, Any]) -> dict[str, Any]:
    """``timestep_spacing="leading"`` for a SECOND_ORDER_IN_SIGMA scheduler on a schedule that
    ends at zero SNR; {} otherwise.

    Such a scheduler corrects each step with a second model call, and takes the step along a
    straight line in sigma from the first call's sigma: whatever differs between the two calls
    reaches the result multiplied by sigma / sigma_second (halved by Heun's averaging; DPM2
    calls at the log-midpoint, DPM2 a at the log-midpoint to sigma_down, about sigma_next).
    Trailing and linspace spacing start at the last training step, sigma_max = 4096, and the
    next sigma of the cosine schedule is 6.4 at 10 steps: measured gains 321 (Heun), 641
    (DPM2 a) and 25 (DPM2), still 63, 128 and 11 at 50 steps. What differs is the model's
    estimate of the image, more so with guidance: Heun and DPM2 a draw noise or swapped
    colours. In bfloat16 it is also the rounding of the first call's sample near 4096 (these
    schedulers step in the model's dtype; Euler and DPM-Solver upcast), about 7 latent units,
    which DPM2's gain makes noise too. Leading spacing starts one step below the top (t = 901,
    sigma 6.5, at 10 steps), where the gain is under 2. The price: sampling starts from noise
    at that sigma without the signal the schedule still has there, as it does on SD's
    schedules (sigma_max 14.6). docs/engine.md has the figures.
    """
    if class_name not in SECOND_ORDER_IN_SIGMA or not ends_at_zero_snr(config):
        return {}
    return {"timestep_spacing": "leading"}


def ends_at_zero_snr(config: dict[str, Any]) -> bool:
    """Whether the schedule's last alpha-bar is at zero SNR or floored there (TERMINAL_ALPHA_BAR,
    with room for float32 rounding in betas read back from a recipe)."""
    return _terminal_alpha_bar(json.dumps(config, sort_keys=True)) < 2 * TERMINAL_ALPHA_BAR


@functools.lru_cache(maxsize=32)
def _terminal_alpha_bar(config_json: str) -> float:
    betas = DDPMScheduler.from_config(json.loads(config_json)).betas
    return float(torch.cumprod(1.0 - betas, dim=0)[-1])


def shortest_float32(values: torch.Tensor) -> list[float]:
    """float32 values as the shortest decimals that read back as the same float32s.

    Schedulers read `trained_betas` as float32. `tolist()` writes each one's float64 digits
    (0.0008500000112690032 for 0.00085), which made the demo model's recipe 23 kB, written to
    every job row, output row and PNG. A value whose short form would round differently
    through float64 keeps its long form, so the schedule is the same bit for bit.
    """
    floats = values.to(torch.float32).numpy()
    # numpy prints a float32 as the shortest digits that parse back to it as a float32.
    short = np.array([float(str(value)) for value in floats])
    same = short.astype(np.float32) == floats
    return np.where(same, short, floats.astype(np.float64)).tolist()


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
    return _from_the_first_step(cls.from_config(ref.config))


if __name__ == "__main__":
    # schedules._resolve's child process: a model's scheduler config in, the table out.
    json.dump(resolve_all(json.load(sys.stdin)), sys.stdout)
