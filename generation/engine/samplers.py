"""AUTOMATIC1111-style sampler names, each a diffusers scheduler class and config overrides.

A scheduler is built with ``from_config`` on the model's own scheduler config, so the model's
training schedule (betas, prediction type, timestep spacing) carries over; the sampler's name
decides only how it steps. The config it resolves to is recorded in the recipe in full, so a
stock scheduler class given that config steps exactly the same. A recorded config read back
from elsewhere is built only once ``check_scheduler`` has matched it to that resolution.
"""

import functools
import inspect
import json
import math
from typing import Any

import diffusers
import numpy as np
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

from .recipe import SchedulerRef, shown

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


def resolved_ref(
    name: str, base_config: dict[str, Any], seed: int, batch_size: int = 1
) -> SchedulerRef:
    """``scheduler_ref(make_scheduler(...))``, remembered per sampler and model config.

    Every submission resolves its sampler, and building a scheduler takes milliseconds
    (diffusers inspects constructor signatures, and the floored betas need a schedule of
    their own), spent while the person who pressed Generate waits. Only the SDE sampler's
    config depends on the seeds. The ref is shared: ``Recipe.to_json`` copies its config.
    """
    seeds = (seed, batch_size) if SAMPLERS[name][0] is DPMSolverSDEScheduler else None
    return _resolved_ref(name, json.dumps(base_config, sort_keys=True), seeds)


@functools.lru_cache(maxsize=128)
def _resolved_ref(name: str, config_json: str, seeds: tuple[int, int] | None) -> SchedulerRef:
    seed, batch_size = seeds or (0, 1)
    return scheduler_ref(make_scheduler(name, json.loads(config_json), seed, batch_size))


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


# Knobs that only place, clip or finish a run's steps, neither the model's schedule nor the
# sampler's method: a recipe made elsewhere (another Studio, other diffusers defaults) may set
# them otherwise, to one of these values (typed: a bool is a bool). Every value here builds
# every sampler's scheduler (tests/generation/test_recipe_trust.py).
TUNABLE: dict[str, tuple[Any, ...]] = {
    "timestep_spacing": ("leading", "linspace", "trailing"),
    "steps_offset": (0, 1),
    "final_sigmas_type": ("zero", "sigma_min"),
    **{key: (False, True) for key in (
        "clip_sample", "set_alpha_to_one", "thresholding", "lower_order_final", "euler_at_final",
    )},
}


def check_scheduler(
    ref: SchedulerRef, name: str, base_config: dict[str, Any], seed: int, batch_size: int = 1
) -> dict[str, str]:
    """Errors of a recipe's scheduler, keyed ``scheduler.class`` and ``scheduler.config.KEY``.

    A recipe may come from anywhere (a PNG's text chunk), and ``from_config`` builds whatever
    its config says: num_train_timesteps=1e9 is gigabytes of betas. So it is checked, without
    building anything, against the ref Studio resolves for this model and sampler:
    1. the class is the sampler's;
    2. every key is one of that ref's keys, with that ref's value (same JSON type, same
       value; lists of the same length), or for a TUNABLE key one of its values;
    3. a key left out means the class's default, which must pass the same rule.
    """
    expected = resolved_ref(name, base_config, seed, batch_size)
    if ref.class_name != expected.class_name:
        return {"scheduler.class": f"must be {expected.class_name} for the sampler {name!r}, "
                                   f"not {shown(ref.class_name)}"}
    config, known = ref.config, expected.config
    if not isinstance(config, dict):
        return {"scheduler.config": "must be an object of scheduler settings"}
    # Before anything iterates over a config of any size; a few strays are named one by one.
    if len(config) > 2 * len(known):
        return {"scheduler.config": f"has {len(config)} settings; {ref.class_name} has "
                                    f"{len(known)}"}
    errors = {}
    for key, value in config.items():
        label = f"scheduler.config.{key if isinstance(key, str) else shown(key)}"
        if key not in known:
            errors[label] = f"is not a setting of {ref.class_name}"
        elif problem := _value_problem(key, value, known[key]):
            errors[label] = problem
    defaults = _defaults(ref.class_name)
    for key in known.keys() - config.keys():
        default = defaults.get(key, known[key])  # a key the class ignores stays ignored
        if _value_problem(key, default, known[key]):
            errors[f"scheduler.config.{key}"] = (
                f"is missing, and {ref.class_name}'s default ({shown(default)}) is not the "
                "value this model and sampler use"
            )
    return errors


def _value_problem(key: str, value: Any, expected: Any) -> str | None:
    if _same(value, expected):
        return None
    if key in TUNABLE:
        if any(_same(value, allowed) for allowed in TUNABLE[key]):
            return None
        return f"must be one of {', '.join(map(repr, TUNABLE[key]))}, not {shown(value)}"
    if isinstance(expected, list | tuple):
        return f"must be the {len(expected)} values this model and sampler use"
    return f"must be {expected!r} for this model and sampler, not {shown(value)}"


def _same(value: Any, expected: Any) -> bool:
    """Equal and of the same JSON type (True is not 1; 1000.0 is not 1000). Recursion follows
    ``expected``, Studio's own value, and a list's length is compared before its items."""
    if isinstance(expected, list | tuple):
        return (
            isinstance(value, list | tuple)
            and len(value) == len(expected)
            and all(_same(v, e) for v, e in zip(value, expected, strict=True))
        )
    return type(value) is type(expected) and value == expected


@functools.cache
def _defaults(class_name: str) -> dict[str, Any]:
    """The keyword defaults of a scheduler class's constructor, by name."""
    parameters = inspect.signature(scheduler_class(class_name).__init__).parameters
    return {key: p.default for key, p in parameters.items() if p.default is not p.empty}


def scheduler_class(name: str) -> type[SchedulerMixin] | None:
    cls = getattr(diffusers, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, SchedulerMixin) else None


def scheduler_from_ref(ref: SchedulerRef) -> SchedulerMixin:
    """The scheduler a recipe recorded, built with the stock class from its config."""
    cls = scheduler_class(ref.class_name)
    if cls is None:
        raise KeyError(f"{ref.class_name!r} is not a diffusers scheduler")
    return _from_the_first_step(cls.from_config(ref.config))
