"""One generation request (docs/architecture.md §3.2): each field's name, type, default,
limits, label and help, declared once, in JobRequest below.

Every door translates its own dialect into a JobRequest and nothing else: the generate page
posts its form, Studio's API its JSON, the OpenAI and AUTOMATIC1111 endpoints theirs (renaming
`n`, `size`, `cfg_scale`, …), Reproduce an imported PNG's parameters. The page's form
(generation/forms.py) and the JSON doors' schemas (`schema_fields`) are built from this
declaration, so a field added here shows on every door. `recipes.submit` turns a request into
a queued job or a Refused, which each door renders in its own shape.
"""

import dataclasses
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from pydantic import BaseModel
from pydantic import Field as SchemaField

from studio.api import Text

from . import engine, registry
from .engine.inputs import (
    DEFAULT_HIRES_STRENGTH,
    DEFAULT_UPSCALER,
    MAX_HIRES_SCALE,
    MAX_MASK_BLUR,
    MIN_HIRES_SCALE,
    UPSCALERS,
)
from .engine.recipe import MAX_GUIDANCE, MAX_LORA_WEIGHT, MAX_LORAS, MAX_STEPS, SIZE_MULTIPLE
from .request_images import ImageData, MaskData, mask_fits
from .request_images import typed as typed_image

# An image to image request's strength when it names none: A1111's default denoising strength.
DEFAULT_STRENGTH = 0.75


class Refused(Exception):
    """Why a request cannot be queued: a message per field, keyed as the request names it
    (`__all__` for the request as a whole), and its kind: INVALID (fix the fields) or LIMIT
    (a per-user limit; the same request may pass in `retry_after` seconds)."""

    INVALID = "invalid"
    LIMIT = "limit"

    def __init__(self, errors: dict[str, str], *, retry_after: int | None = None):
        super().__init__("; ".join(f"{key}: {message}" for key, message in errors.items()))
        self.errors = errors
        self.retry_after = retry_after
        self.kind = self.INVALID if retry_after is None else self.LIMIT

    def status(self, invalid: int) -> int:
        """The HTTP status: 429 over a limit, else the door's own for bad input."""
        return 429 if self.kind == self.LIMIT else invalid

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


@dataclass(frozen=True)
class RequestField:
    """A field of the request. Name, type and default come from JobRequest's attribute."""

    label: str
    help: str
    unset: str = ""  # what leaving it out means, where its default is None
    low: float | None = None
    high: float | None = None
    step: float | None = None  # the page's spinner step; not a limit
    sized: bool = False  # a size: its limits and default are the chosen model's
    required: bool = False  # the JSON APIs refuse a request without it
    choices: Callable[[], list[str]] | None = None
    listed_by: str = ""  # the API call that lists the choices
    lines: int = 0  # a text box of this many lines on the page
    placeholder: str = ""
    # Where the page puts it: "text", "main", "variation", "loras", "image" (the input image,
    # its mask and how they are used) or "hires" (the hires fix).
    group: str = "main"
    name: str = ""
    # str, int, float, bool, LoraChoice (a list of them), ImageData or MaskData (an image
    # file: base64 or a data: URL in JSON and form fields, bytes or a file from multipart)
    kind: type = str
    default: Any = None

    def bounds(self, model: engine.ModelSpec | None = None) -> tuple[Any, Any]:
        """The lowest and highest value, a size's for `model` when it is known."""
        if self.sized and model is not None:
            return model.limits.min_size, model.limits.max_size
        return self.low, self.high

    @property
    def description(self) -> str:
        """The help, the range and what leaving it out means: for the API's schema."""
        parts = [self.help]
        if self.listed_by:
            parts.append(f"A name from {self.listed_by}.")
        if self.sized:
            parts.append(f"A multiple of {SIZE_MULTIPLE}, within the model's limits.")
        elif self.low is not None and self.high is not None:
            parts.append(f"From {_shown(self.low)} to {_shown(self.high)}.")
        if issubclass(self.kind, ImageData):
            parts.append(f"As base64 or a data: URL. At most "
                         f"{settings.STUDIO_INPUT_MAX_BYTES:,} bytes once decoded, "
                         f"and {settings.STUDIO_INPUT_MAX_PIXELS:,} pixels.")
        if self.unset:
            parts.append(f"Left out: {self.unset}.")
        return " ".join(parts)


def _shown(number: float) -> str:
    return f"{number:g}" if isinstance(number, float) else str(number)


def _field(default: Any, label: str, help: str, **spec: Any) -> Any:
    return dataclasses.field(
        default=default, metadata={"spec": RequestField(label=label, help=help, **spec)}
    )


def model_names() -> list[str]:
    return list(registry.models())


def sampler_names() -> list[str]:
    return list(engine.SAMPLERS)


def lora_names() -> list[str]:
    return list(registry.loras())


def upscaler_names() -> list[str]:
    return list(UPSCALERS)


@dataclass(frozen=True)
class LoraChoice:
    """A LoRA to apply, by name, at a weight (the engine checks both)."""

    name: str
    weight: float = 1.0


class LoraIn(BaseModel):
    """A LoRA in a JSON request (`loras: [{"name", "weight"}]`)."""

    name: Text
    weight: float = SchemaField(1.0, ge=-MAX_LORA_WEIGHT, le=MAX_LORA_WEIGHT)


@dataclass(frozen=True)
class JobRequest:
    """What a person asks for. None leaves the choice to the engine or the server: the
    default model, the model's native size, a random seed (which the recipe then records).

    A field added here is on the generate page, in Studio's API schema and in the OpenAI and
    A1111 requests under its own name, and reaches engine.build_recipe by that name."""

    prompt: str = _field("", "Prompt", "What to draw.", required=True, lines=3, group="text",
                         placeholder="a red circle on a blue background")
    negative_prompt: str = _field("", "Negative prompt", "What to steer away from.", lines=2,
                                  group="text", placeholder="what to steer away from")
    model: str | None = _field(None, "Model", "The model that draws it.", choices=model_names,
                               listed_by="GET /models", unset="the server's default model")
    sampler: str = _field(engine.DEFAULT_SAMPLER, "Sampler", "How each step removes noise.",
                          choices=sampler_names, listed_by="GET /samplers")
    steps: int = _field(engine.DEFAULT_STEPS, "Steps", "More steps: finer detail, slower.",
                        low=1, high=MAX_STEPS)
    guidance_scale: float = _field(engine.DEFAULT_GUIDANCE, "Guidance",
                                   "How closely to follow the prompt.", low=0,
                                   high=MAX_GUIDANCE, step=0.5)
    width: int | None = _field(None, "Width", "In pixels.", sized=True, step=SIZE_MULTIPLE,
                               low=SIZE_MULTIPLE, unset="the model's native size")
    height: int | None = _field(None, "Height", "In pixels.", sized=True, step=SIZE_MULTIPLE,
                                low=SIZE_MULTIPLE, unset="the model's native size")
    batch_size: int = _field(1, "Batch", "Images made at once, seeds counting up.", low=1,
                             high=engine.MAX_BATCH)
    seed: int | None = _field(None, "Seed", "The same seed makes the same image.", low=0,
                              high=engine.SEED_MAX, unset="random", placeholder="random")
    subseed: int = _field(0, "Variation seed", "A second noise, mixed in by Strength.", low=0,
                          high=engine.SEED_MAX, group="variation", placeholder="0")
    subseed_strength: float = _field(0.0, "Strength", "0 keeps the seed's image; 1 is the "
                                     "variation seed's.", low=0, high=1, step=0.05,
                                     group="variation")
    loras: tuple[LoraChoice, ...] = _field(
        (), "LoRAs", "Add-on weights that steer the style, each at a weight (1 is full "
        f"strength). At most {MAX_LORAS}.", choices=lora_names, listed_by="GET /loras",
        group="loras", placeholder="name:weight, name:weight",
    )
    init_image: ImageData | None = _field(
        None, "Input image", "The image to start from (image to image): a PNG, JPEG or WebP.",
        group="image", unset="text to image, from noise",
    )
    mask: MaskData | None = _field(
        None, "Mask", "White where the input image is repainted (inpainting). Exactly the "
        "input image's size: masks are never resized.", group="image",
        unset="the whole image is repainted",
    )
    strength: float | None = _field(
        None, "Denoising strength", "How much of the input image is repainted: near 0 keeps "
        "it, 1 ignores it.", low=0, high=1, step=0.05, group="image",
        unset=f"{DEFAULT_STRENGTH:g} with an input image",
    )
    mask_blur: int = _field(0, "Mask blur", "Softens the mask's edge by this many pixels.",
                            low=0, high=MAX_MASK_BLUR, group="image")
    paste_back: bool = _field(
        True, "Keep unmasked pixels", "Paste the input image back outside the (blurred) mask, "
        "as A1111 does; off, the result is stock diffusers' inpainting.", group="image",
    )
    hires_scale: float | None = _field(
        None, "Hires scale", "Hires fix: render at the size above, upscale by this, then "
        "refine at the larger size.", low=MIN_HIRES_SCALE, high=MAX_HIRES_SCALE, step=0.25,
        group="hires", unset="no hires fix",
    )
    hires_steps: int = _field(0, "Hires steps", "Steps of the refining pass; 0: as many as "
                              "Steps.", low=0, high=MAX_STEPS, group="hires")
    hires_strength: float = _field(DEFAULT_HIRES_STRENGTH, "Hires strength",
                                   "How much the refining pass repaints.", low=0, high=1,
                                   step=0.05, group="hires")
    hires_upscaler: str = _field(DEFAULT_UPSCALER, "Upscaler", "How the first image is "
                                 "enlarged before it is refined.", choices=upscaler_names,
                                 group="hires")


def _kind(annotation: Any) -> type:
    """str, int or float from `int | None` and the like."""
    kinds = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    return kinds[0] if kinds else annotation


FIELDS: tuple[RequestField, ...] = tuple(
    dataclasses.replace(field.metadata["spec"], name=field.name, default=field.default,
                        kind=_kind(field.type))
    for field in dataclasses.fields(JobRequest)
)
NAMES = tuple(field.name for field in FIELDS)


# --- Parsing ------------------------------------------------------------------------------

TYPE_ERRORS = {int: "Enter a whole number.", float: "Enter a number.", str: "Enter text.",
               bool: "Enter true or false.",
               LoraChoice: "Enter LoRAs as name:weight, separated by commas."}
BOOLEANS = {"true": True, "on": True, "1": True, "yes": True,
            "false": False, "off": False, "0": False, "no": False}
# Images are not text: each has a cap of its own, in bytes (request_images).
IMAGE_NAMES = tuple(field.name for field in FIELDS if issubclass(field.kind, ImageData))


def too_long(params: Mapping) -> dict[str, str]:
    """An error for each text field longer than STUDIO_MAX_TEXT_CHARS, checked before
    anything reads them: tokenizing or matching blocked phrases in megabytes would hold a
    thread."""
    limit = settings.STUDIO_MAX_TEXT_CHARS
    return {
        name: f"Enter at most {limit:,} characters."
        for name in NAMES
        if name not in IMAGE_NAMES
        and isinstance(value := params.get(name), str) and len(value) > limit
    }


def _typed(kind: type, raw: Any) -> Any:
    """`raw` (form text or a JSON value) as `kind`; ValueError with the message to show."""
    if kind is LoraChoice:
        return _loras(raw)
    if issubclass(kind, ImageData):
        return typed_image(kind, raw)
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in BOOLEANS:
            return BOOLEANS[raw.lower()]
        raise ValueError(TYPE_ERRORS[bool])
    if kind is str:
        if not isinstance(raw, str):
            raise ValueError(TYPE_ERRORS[str])
        if "\x00" in raw:  # Postgres cannot store a NUL character in text
            raise ValueError("Remove the NUL character.")
        return raw
    # Form text or a number; a fraction is not a whole number, even where int() would cut it.
    allowed = (str, int) if kind is int else (str, int, float)
    if isinstance(raw, bool) or not isinstance(raw, allowed):
        raise ValueError(TYPE_ERRORS[kind])
    try:
        return kind(raw)
    except (ValueError, OverflowError):
        raise ValueError(TYPE_ERRORS[kind]) from None


def _loras(raw: Any) -> tuple[LoraChoice, ...]:
    """LoRAs from JSON (`[{"name", "weight"}]`) or text (`name:weight, name`, as the page and
    the CLI write them); the weight defaults to 1. Counted before anything is read."""
    entries = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(entries, list | tuple):
        raise ValueError(TYPE_ERRORS[LoraChoice])
    entries = [e for e in entries if not (isinstance(e, str) and not e.strip())]
    if len(entries) > MAX_LORAS:
        raise ValueError(f"Choose at most {MAX_LORAS} LoRAs.")
    return tuple(_lora(entry) for entry in entries)


def _lora(entry: Any) -> LoraChoice:
    if isinstance(entry, str):
        name, colon, weight = entry.strip().rpartition(":")
        entry = {"name": name, "weight": weight} if colon else {"name": weight}
    if not isinstance(entry, Mapping) or set(entry) - {"name", "weight"}:
        raise ValueError(TYPE_ERRORS[LoraChoice])
    name = _typed(str, entry.get("name")).strip()
    weight = entry.get("weight")
    if not name:
        raise ValueError("Name each LoRA.")
    return LoraChoice(name, 1.0 if weight in (None, "") else _typed(float, weight))


def parse(params: Mapping) -> JobRequest:
    """A typed request from a mapping of field names to values (form text or JSON values);
    a field left out or empty takes its default, and names this declaration does not know
    are ignored.

    1. Refuse text over STUDIO_MAX_TEXT_CHARS, before reading it (too_long).
    2. Type each field; Refused names every field that is not of its type. An image is
       typed by decoding it within its own limits (request_images.typed).
    3. Refuse a mask that is not its image's size.
    The limits are the engine's to check, against the chosen model (recipes.recipe_for).
    """
    if errors := too_long(params):
        raise Refused(errors)
    values, errors = {}, {}
    for field in FIELDS:
        raw = params.get(field.name)
        raw = raw.strip() if isinstance(raw, str) else raw
        if raw is None or raw == "" or raw == b"":
            continue
        try:
            values[field.name] = _typed(field.kind, raw)
        except ValueError as exc:
            errors[field.name] = str(exc)
    errors = errors or mask_fits(values)
    if errors:
        raise Refused(errors)
    return JobRequest(**values)


# --- The JSON doors' schemas --------------------------------------------------------------


def schema_fields(*, leave_out: Iterable[str] = ()) -> dict[str, tuple]:
    """The request's fields for a pydantic model (`pydantic.create_model`), but those a
    dialect names or means otherwise: typed, described, with the limits in the schema (the
    engine checks them, naming the field). Left out or null, a field takes its default."""
    fields = {}
    for field in FIELDS:
        if field.name in leave_out:
            continue
        kind = {str: Text, LoraChoice: list[LoraIn], ImageData: str, MaskData: str}.get(
            field.kind, field.kind)
        low, high = field.bounds()
        limits = {"minimum": low, "maximum": high} if not field.sized and high is not None else {}
        default = ... if field.required else field.default
        default = list(default) if isinstance(default, tuple) else default  # JSON has lists
        info = SchemaField(default, description=field.description,
                           json_schema_extra=limits or None)
        fields[field.name] = (kind if field.required else kind | None, info)
    return fields
