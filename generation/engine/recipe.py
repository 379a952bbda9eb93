"""The recipe (docs/architecture.md §4): everything needed to make the same pixels again.

A recipe is built from what a person asked for (``build_recipe``), validated once, loudly,
before anything runs (``validate_recipe``), and completed by ``generate`` with what only the
worker knows (device, dtype, threads). Its JSON form is a contract users' scripts rely on.
"""

import math
import os
import reprlib
import secrets
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import metadata
from typing import Any

from .fast_path import OFF, FastPath, fast_path_errors, fast_path_from_json
from .inputs import Hires, ImageRef, MaskRef, inputs_from_json, inputs_json

SEED_MAX = 2**32 - 1
MAX_STEPS = 1000
MAX_GUIDANCE = 30.0
MAX_BATCH = 8
SIZE_MULTIPLE = 8
DTYPES = ("float32", "float16", "bfloat16")
DEVICES = ("cpu", "cuda")
# torch's intra-op threads a recipe may pin. Not this machine's core count: a run reproduces
# bit for bit only at the recorded count, which a smaller machine may still run, slower.
MAX_THREADS = max(256, os.cpu_count() or 1)
# Far beyond any text encoder's window: a longer prompt is refused before it is tokenized.
MAX_PROMPT_CHARS = 10_000

# LoRAs one recipe may apply, and how far each may be weighted either way: A1111 sets no
# bound, but past a few units a LoRA only breaks the image.
MAX_LORAS = 8
MAX_LORA_WEIGHT = 10.0

# Far above any diffusers scheduler's settings; a config with more is not one.
MAX_CONFIG_KEYS = 256
DEFAULT_SAMPLER = "DDIM"
# The demo model's measured default (generation/demo_model, docs/demo_model.md): adherence is
# highest at guidance 1-3 and falls from 5 on.
DEFAULT_GUIDANCE = 3.0
DEFAULT_STEPS = 20


def random_seed() -> int:
    """A seed for a recipe that asked for "random"; the recipe stores it."""
    return secrets.randbelow(SEED_MAX + 1)


class RecipeError(ValueError):
    """One message per bad field, keyed by the field's name in the recipe's JSON."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{key}: {message}" for key, message in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class ModelRef:
    name: str
    source: str  # what a stock ``from_pretrained`` loads: a local directory or a hub id
    hash: str = ""  # sha256 of the weight files (``weights_hash``)
    family: str = ""  # sd1, sd2 or sdxl (``families.FAMILIES``), read from the model's files


@dataclass(frozen=True)
class LoraRef:
    name: str
    weight: float = 1.0  # the scale of both the UNet's and the text encoders' adapters
    hash: str = ""  # sha256 of the file, as a model's: a reproduction refuses another file

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight, "hash": self.hash}


@dataclass(frozen=True)
class SchedulerRef:
    class_name: str  # a diffusers scheduler class
    config: dict[str, Any]  # the full config it was built with


@dataclass(frozen=True)
class Versions:
    studio: str
    torch: str
    diffusers: str

    @classmethod
    @cache
    def current(cls) -> "Versions":
        try:
            studio = metadata.version("studio")
        except metadata.PackageNotFoundError:
            studio = "unknown"
        # Read from the installed packages' metadata, not their modules: the web tier builds
        # recipes without importing torch or diffusers (docs/architecture.md §1).
        return cls(studio=studio, torch=metadata.version("torch"),
                   diffusers=metadata.version("diffusers"))


@dataclass(frozen=True)
class Recipe:
    prompt: str
    model: ModelRef
    negative_prompt: str = ""
    sampler: str = DEFAULT_SAMPLER
    scheduler: SchedulerRef | None = None  # resolved from ``sampler`` by ``build_recipe``
    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    seed: int = 0  # the batch's base seed; image i draws its noise from seed + i
    batch_size: int = 1
    batch_index: int = 0
    subseed: int = 0
    subseed_strength: float = 0.0
    width: int = 64
    height: int = 64
    loras: tuple[LoraRef, ...] = ()
    # Image to image (inputs.py): the input and mask by the hash of their stored PNGs;
    # ``strength`` is None for text to image. ``paste_back``: the original pixels go back
    # outside the (blurred) mask after decoding, as A1111 does and stock diffusers does not.
    init_image: ImageRef | None = None
    strength: float | None = None
    mask: MaskRef | None = None
    mask_blur: int = 0
    paste_back: bool = True
    hires: Hires | None = None
    # Filled in by ``generate`` from the pipeline and the process that ran it.
    dtype: str | None = None
    device: str | None = None
    threads: int | None = None
    # Whether the VAE decoded in tiles, which changes the pixels: the worker decides
    # (STUDIO_VAE_TILING) unless the recipe says, as a reproduction's does.
    vae_tiling: bool | None = None
    # The GPU fast path it ran with (fast_path.py): compile mode, channels-last, fused QKV.
    # The worker decides (STUDIO_COMPILE, ...) unless the recipe says, as a reproduction's does.
    fast_path: FastPath | None = None
    versions: Versions | None = field(default=None)

    @property
    def image_seed(self) -> int:
        """The seed of this image's own noise, as AUTOMATIC1111 reports it."""
        return self.seed + self.batch_index

    def with_batch_index(self, index: int) -> "Recipe":
        return replace(self, batch_index=index)

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "model": {
                "name": self.model.name,
                "source": self.model.source,
                "hash": self.model.hash,
                "family": self.model.family,
            },
            "sampler": self.sampler,
            "scheduler": None
            if self.scheduler is None
            else {"class": self.scheduler.class_name, "config": dict(self.scheduler.config)},
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "batch_index": self.batch_index,
            "subseed": self.subseed,
            "subseed_strength": self.subseed_strength,
            "width": self.width,
            "height": self.height,
            "loras": [lora.to_json() for lora in self.loras],
            **inputs_json(self),
            "dtype": self.dtype,
            "device": self.device,
            "threads": self.threads,
            "vae_tiling": self.vae_tiling,
            "fast_path": None if self.fast_path is None else self.fast_path.to_json(),
            "versions": None
            if self.versions is None
            else {
                "studio": self.versions.studio,
                "torch": self.versions.torch,
                "diffusers": self.versions.diffusers,
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Recipe":
        """The inverse of ``to_json``; a malformed document raises RecipeError, by field.

        Only the shapes are checked here (the parts are objects of strings, the scheduler's
        config an object); ``validate_recipe`` checks the values.
        """
        try:
            model = ModelRef(**data["model"])
            scheduler = data.get("scheduler")
            versions = data.get("versions")
            fields = {key: data[key] for key in _SCALARS if key in data}
            loras = data.get("loras") or []
            if not isinstance(loras, list) or len(loras) > MAX_LORAS:
                raise RecipeError({"loras": f"must be a list of at most {MAX_LORAS} LoRAs"})
            parts, errors = inputs_from_json(data)
            if errors:
                raise RecipeError(errors)
            recipe = cls(
                model=model,
                loras=tuple(LoraRef(**lora) for lora in loras),
                scheduler=None
                if scheduler is None
                else SchedulerRef(class_name=scheduler["class"], config=scheduler["config"]),
                versions=None if versions is None else Versions(**versions),
                fast_path=fast_path_from_json(data.get("fast_path")),
                **fields,
                **parts,
            )
        except (AttributeError, KeyError, TypeError) as exc:
            raise RecipeError({"recipe": f"not a Studio recipe: {exc}"}) from exc
        if errors := _shape_errors(recipe):
            raise RecipeError(errors)
        return recipe


def run_fast_path(recipe: Recipe, default: FastPath) -> FastPath:
    """The fast path a recipe runs with: its own; none for a recipe that ran before recipes
    recorded it (``versions`` but no ``fast_path``); else ``default``, the worker's, unfused
    with LoRAs (``fast_path_errors`` says why)."""
    if recipe.fast_path is not None:
        return recipe.fast_path
    if recipe.versions is not None:
        return OFF
    return replace(default, fused_qkv=default.fused_qkv and not recipe.loras)


def _shape_errors(recipe: Recipe) -> dict[str, str]:
    """Errors of the parts whose values other code reads as given: names, hashes, versions,
    the prompts; and no field nested deeper than a recipe nests (a list a thousand levels
    deep is a RecursionError for whatever walks it next)."""
    texts = {f"model.{key}": value for key, value in vars(recipe.model).items()}
    for i, lora in enumerate(recipe.loras):
        texts.update({f"loras.{i}.{key}": getattr(lora, key)
                      for key in ("name", "hash")})
    if recipe.versions is not None:
        texts.update({f"versions.{key}": value for key, value in vars(recipe.versions).items()})
    if recipe.scheduler is not None:
        texts["scheduler.class"] = recipe.scheduler.class_name
    texts.update({key: getattr(recipe, key) for key in ("prompt", "negative_prompt", "sampler")})
    errors = {key: "must be text" for key, value in texts.items() if not isinstance(value, str)}
    errors.update({key: "must be one value" for key in _SCALARS
                   if isinstance(getattr(recipe, key), list | dict)})
    if recipe.scheduler is not None:
        errors.update(_config_shape_errors(recipe.scheduler.config))
    return errors


def _config_shape_errors(config: Any) -> dict[str, str]:
    """A scheduler config is flat: each setting a value or a list of numbers (the betas)."""
    if not isinstance(config, dict):
        return {"scheduler.config": "must be an object of scheduler settings"}
    if len(config) > MAX_CONFIG_KEYS:  # before anything iterates over it
        return {"scheduler.config": f"has {len(config)} settings; the most is {MAX_CONFIG_KEYS}"}
    return {
        f"scheduler.config.{key}": "must be a value or a list of numbers"
        for key, value in config.items()
        if isinstance(value, dict)
        or (isinstance(value, list) and not all(_is_number(v) for v in value))
    }


_SCALARS = (
    "prompt",
    "negative_prompt",
    "sampler",
    "steps",
    "guidance_scale",
    "seed",
    "batch_size",
    "batch_index",
    "subseed",
    "subseed_strength",
    "width",
    "height",
    "dtype",
    "device",
    "threads",
    "vae_tiling",
    "strength",
    "mask_blur",
    "paste_back",
)


@dataclass(frozen=True)
class ModelLimits:
    """What a model can take, read from its configs (``load_spec``)."""

    min_size: int
    max_size: int
    max_prompt_tokens: int


def _short_repr() -> reprlib.Repr:
    short = reprlib.Repr()
    short.maxstring = short.maxother = short.maxlong = 60
    short.maxlist = short.maxdict = 4
    short.maxlevel = 2
    return short


_SHOWN = _short_repr()


def shown(value: Any) -> str:
    """``repr(value)`` cut short: a message may quote a value a user sent, never all of it."""
    return _SHOWN.repr(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_range(errors: dict, key: str, value: Any, low: int, high: int) -> None:
    if not _is_int(value) or not low <= value <= high:
        errors[key] = f"must be a whole number from {low} to {high}, not {shown(value)}"


def _check_size(errors: dict, key: str, value: Any, limits: ModelLimits) -> None:
    if not _is_int(value) or value % SIZE_MULTIPLE:
        errors[key] = f"must be a multiple of {SIZE_MULTIPLE}, not {shown(value)}"
    elif not limits.min_size <= value <= limits.max_size:
        errors[key] = (
            f"must be from {limits.min_size} to {limits.max_size} for this model, not {value}"
        )


def check_numbers(recipe: Recipe, limits: ModelLimits) -> dict[str, str]:
    """Errors of the numeric fields, one per field."""
    errors: dict[str, str] = {}
    _check_range(errors, "steps", recipe.steps, 1, MAX_STEPS)
    if not _is_number(recipe.guidance_scale) or not 0 <= recipe.guidance_scale <= MAX_GUIDANCE:
        errors["guidance_scale"] = (
            f"must be a number from 0 to {MAX_GUIDANCE:g}, not {shown(recipe.guidance_scale)}"
        )
    _check_range(errors, "seed", recipe.seed, 0, SEED_MAX)
    _check_range(errors, "subseed", recipe.subseed, 0, SEED_MAX)
    strength = recipe.subseed_strength
    if not _is_number(strength) or not 0 <= strength <= 1:
        errors["subseed_strength"] = f"must be a number from 0 to 1, not {shown(strength)}"
    _check_range(errors, "batch_size", recipe.batch_size, 1, MAX_BATCH)
    if "batch_size" not in errors:
        _check_range(errors, "batch_index", recipe.batch_index, 0, recipe.batch_size - 1)
    _check_size(errors, "width", recipe.width, limits)
    _check_size(errors, "height", recipe.height, limits)
    if recipe.threads is not None:
        _check_range(errors, "threads", recipe.threads, 1, MAX_THREADS)
    if recipe.dtype is not None and recipe.dtype not in DTYPES:
        errors["dtype"] = f"must be one of {', '.join(DTYPES)}, not {shown(recipe.dtype)}"
    if recipe.device is not None and recipe.device not in DEVICES:
        errors["device"] = f"must be one of {', '.join(DEVICES)}, not {shown(recipe.device)}"
    if recipe.vae_tiling is not None and not isinstance(recipe.vae_tiling, bool):
        errors["vae_tiling"] = f"must be true, false or null, not {shown(recipe.vae_tiling)}"
    errors.update(_lora_errors(recipe.loras))
    errors.update(fast_path_errors(recipe.fast_path, recipe.loras))
    return errors


def _lora_errors(loras: tuple[LoraRef, ...]) -> dict[str, str]:
    if len(loras) > MAX_LORAS:
        return {"loras": f"may name at most {MAX_LORAS} LoRAs, not {len(loras)}"}
    errors, seen = {}, set()
    for i, lora in enumerate(loras):
        weight = lora.weight
        if not _is_number(weight) or not -MAX_LORA_WEIGHT <= weight <= MAX_LORA_WEIGHT:
            errors[f"loras.{i}.weight"] = (
                f"must be a number from {-MAX_LORA_WEIGHT:g} to {MAX_LORA_WEIGHT:g}, "
                f"not {shown(weight)}"
            )
        if not isinstance(lora.name, str):
            errors[f"loras.{i}.name"] = "must be text"
        elif lora.name in seen:
            errors[f"loras.{i}.name"] = f"names {shown(lora.name)} twice"
        else:
            seen.add(lora.name)
    return errors
