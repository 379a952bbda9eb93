"""From a request (generation/job_request.py) to a validated recipe (docs/architecture.md §4)
and a queued job: `submit`, the one service the generate page and the APIs call.

Validation happens once, loudly, before anything is queued: each bad field gets its own
message, named after the field, in one Refused.
"""

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path

from studio.api import clip

from . import engine, registry, services
from .engine.inputs import Hires, ImageRef, MaskRef
from .engine.recipe import SIZE_MULTIPLE
from .job_request import (
    DEFAULT_STRENGTH,
    FIELDS,
    IMAGE_NAMES,
    JobRequest,
    LoraChoice,
    Refused,
    lora_names,
    model_names,
    parse,
)
from .models import BlockedPhrase, InputImage, Job
from .request_images import UnreadableImage

log = logging.getLogger(__name__)

# How many names a refusal lists; GET /api/v1/loras has them all.
SHOWN_NAMES = 20


def model_spec(name: str) -> engine.ModelSpec | None:
    """The limits and native size of the model called `name` (read from its configs, not its
    weights); None when there is no such model or its files cannot be read."""
    source = registry.models().get(name)
    if source is None:
        return None
    try:
        return engine.load_spec(source)
    except engine.ModelLoadError as exc:
        log.warning("model %r cannot be read: %s", name, exc)
        return None


def form_initial(params: Mapping) -> dict:
    """The generate form's starting values: the request's defaults, with the default model
    and the chosen model's native size, overridden by query parameters (Remix links carry a
    recipe this way). Nothing here is trusted; submit validates."""
    initial = {**dataclasses.asdict(JobRequest()), "model": registry.default_name()}
    for key in initial:
        # Images come as files, never in a link (generate.js fetches "Use as input"'s).
        if params.get(key) not in (None, "") and key not in IMAGE_NAMES:
            initial[key] = params.get(key)
    spec = model_spec(str(initial["model"]))
    for field in FIELDS:
        if field.sized and initial[field.name] is None and spec is not None:
            initial[field.name] = spec.native_size
    if not isinstance(initial["loras"], str):  # the page edits them as `name:weight` text
        initial["loras"] = ", ".join(f"{lora['name']}:{lora['weight']:g}"
                                     for lora in initial["loras"])
    return initial


def blocked_phrase_in(prompt: str) -> str | None:
    """The first blocked phrase the prompt contains (ignoring case), or None."""
    lowered = prompt.lower()
    for phrase in BlockedPhrase.objects.values_list("phrase", flat=True):
        if phrase.lower() in lowered:
            return phrase
    return None


def _model(name: str) -> engine.ModelRef:
    try:
        model = registry.get(name)
    except engine.ModelLoadError as exc:
        # The reason names the model's files on this server: for the log, not the caller.
        log.warning("model %r cannot be read: %s", name, exc)
        raise Refused({"model": "This model cannot be read right now."}) from exc
    if model is None:
        raise Refused({"model": "Unknown model. Choose one of: " + ", ".join(model_names())})
    return model


def recipe_for(request: JobRequest) -> dict:
    """The request as validated recipe JSON; Refused names the fields at fault.

    1. Refuse a prompt with a blocked phrase; resolve the model's name to its source.
    2. Let the engine fill its defaults (a random seed among them, recorded in the recipe)
       and validate the whole recipe against the model's limits.
    """
    blocked = blocked_phrase_in(request.prompt)
    if blocked:
        raise Refused(
            {"prompt": f"The prompt contains “{blocked}”, which this server does not allow."}
        )
    model = _model(request.model or registry.default_name())
    chosen = {
        field.name: value for field in dataclasses.fields(request)
        if (value := getattr(request, field.name)) is not None
        and field.name not in ("model", "loras", *IMAGE_TO_IMAGE)
    }
    try:
        recipe = engine.build_recipe(model=model, loras=lora_refs(request.loras, model),
                                     **chosen, **image_to_image(request, model))
    except engine.RecipeError as exc:
        raise Refused(request_names(exc.errors)) from exc
    except UnreadableImage as exc:  # decoded only now: parsing read the header alone
        raise Refused({exc.field: str(exc)}) from exc
    return recipe.to_json()


# The request's image to image fields (image_to_image makes them the recipe's): the hires
# fix's are one object in a recipe, hires_scale its recipe["hires"]["scale"].
IMAGE_TO_IMAGE = ("init_image", "mask", "strength", "mask_blur", "paste_back", "hires_scale",
                  "hires_steps", "hires_strength", "hires_upscaler")


def image_to_image(request: JobRequest, model: engine.ModelRef) -> dict:
    """The recipe's image to image fields from the request's (IMAGE_TO_IMAGE): the input and
    mask by hash, the strength (DEFAULT_STRENGTH with an input image if it names none), the
    hires fix (only with a scale), and an input image's size, down to a multiple of 8, for
    the size the request leaves out, when the model takes it (else the model's native
    size)."""
    image, mask = request.init_image, request.mask
    fields = {"strength": request.strength, "mask_blur": request.mask_blur,
              "paste_back": request.paste_back}
    if image is not None:
        fields["init_image"] = ImageRef(sha256=image.sha256, width=image.width,
                                        height=image.height)
        if request.strength is None:
            fields["strength"] = DEFAULT_STRENGTH
        spec = model_spec(model.name)
        fields.update({key: value for key, value in _input_size(image, spec).items()
                       if getattr(request, key) is None})
    if mask is not None:
        fields["mask"] = MaskRef(sha256=mask.sha256)
    if request.hires_scale is not None:
        fields["hires"] = Hires(scale=request.hires_scale, steps=request.hires_steps,
                                strength=request.hires_strength,
                                upscaler=request.hires_upscaler)
    return fields


def _input_size(image, spec: engine.ModelSpec | None) -> dict[str, int]:
    """The input's size, rounded down to a multiple of 8; an input outside the model's sizes
    is scaled, keeping its shape, to fit them (a 4000×3000 photo on a 1024-pixel model runs
    at 1024×768), since the engine resizes it to the recipe's size anyway."""
    if spec is None:
        return {}
    low, high = spec.limits.min_size, spec.limits.max_size
    scale = min(1.0, high / max(image.width, image.height))
    scale = max(scale, low / min(image.width, image.height))
    return {
        key: min(high, max(low, int(side * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE))
        for key, side in (("width", image.width), ("height", image.height))
    }


def request_names(errors: dict[str, str]) -> dict[str, str]:
    """The engine's errors keyed by the request's names: `hires.scale` is `hires_scale`,
    `init_image.width` is `init_image`."""
    named = {}
    for key, message in errors.items():
        head, _, rest = key.partition(".")
        if head == "hires":
            key = f"hires_{rest}" if rest else "hires_scale"
        elif head in IMAGE_NAMES:
            key = head
        named.setdefault(key, message)
    return named


def lora_refs(chosen: tuple[LoraChoice, ...], model: engine.ModelRef) -> tuple[engine.LoraRef, ...]:
    """The chosen LoRAs by file, each with its hash when a worker has hashed it (else the
    worker fills it in); Refused for a name no file has or a file for another family, read
    from the files' headers alone."""
    files, errors, refs = registry.loras(), {}, []
    for i, choice in enumerate(chosen):
        path = files.get(choice.name)
        if path is None:
            names = lora_names()
            known = ", ".join(names[:SHOWN_NAMES]) + (", …" if len(names) > SHOWN_NAMES else "")
            errors[f"loras.{i}.name"] = (
                f"Unknown LoRA “{clip(choice.name)}”. Known: {known or 'none on this server'}."
            )
            continue
        if problem := _lora_problem(choice.name, path, model):
            errors[f"loras.{i}.name"] = problem
        refs.append(engine.LoraRef(name=choice.name, weight=choice.weight,
                                   hash=registry.known_hash(path) or ""))
    if errors:
        raise Refused(errors)
    return tuple(refs)


def _lora_problem(name: str, path: str, model: engine.ModelRef) -> str | None:
    try:
        lora = engine.inspect_lora(name, Path(path))
        width = engine.load_spec(model.source).context_width
    except engine.ModelLoadError as exc:
        log.warning("LoRA %r cannot be read: %s", name, exc)
        return f"The LoRA “{name}” cannot be read: it is not a LoRA file, or it is damaged."
    return engine.lora_mismatch(lora, width, f"the model “{model.name}”")


def recipe_from_params(params: Mapping) -> dict:
    """Validated recipe JSON from field names and values (parse, then recipe_for): for
    scripts and tests that make a recipe without a door."""
    return recipe_for(parse(params))


def submit(*, user, request: JobRequest) -> Job:
    """Queue the request as `user`'s job, its input image and mask stored with it in the
    same transaction, once everything is valid. Raises Refused: for its fields (INVALID),
    or when a per-user limit is reached (LIMIT, with when to retry). With input images the
    limits are checked first too (job_submit checks them again, under the user's lock):
    decoding an image is the costly part of a request, and a user at a limit gets none."""
    if request.init_image is not None or request.mask is not None:
        check_limits(user)
    recipe = recipe_for(request)
    try:
        return services.job_submit(user=user, recipe=recipe, inputs=inputs_of(request))
    except services.LimitExceeded as exc:
        raise Refused({"__all__": str(exc)}, retry_after=exc.retry_after) from exc


def check_limits(user) -> None:
    """Refused (LIMIT) when `user` may not queue another job now: for a door to ask before
    costly work on what was sent."""
    try:
        services.check_limits(user)
    except services.LimitExceeded as exc:
        raise Refused({"__all__": str(exc)}, retry_after=exc.retry_after) from exc


def inputs_of(request: JobRequest) -> list[dict]:
    """The request's input image and mask, as generation.inputs.store takes them."""
    kinds = ((request.init_image, InputImage.Kind.IMAGE), (request.mask, InputImage.Kind.MASK))
    return [{"png": data.png, "sha256": data.sha256, "width": data.width,
             "height": data.height, "kind": kind} for data, kind in kinds if data is not None]
