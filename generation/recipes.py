"""From what a person typed to a validated recipe (docs/architecture.md §4), for every door that
submits: the generate page, the API and the compatibility endpoints.

Validation happens once, loudly, before anything is queued: each bad field gets its own
message, named after the field.
"""

import logging
from collections.abc import Mapping

from django.conf import settings

from . import engine, registry
from .models import BlockedPhrase

# None leaves the choice to the engine: its default sampler and guidance, the model's native
# size, and a random seed (which the recipe then records).
DEFAULTS = {
    "prompt": "",
    "negative_prompt": "",
    "sampler": None,
    "steps": 20,
    "guidance_scale": None,
    "width": None,
    "height": None,
    "batch_size": 1,
    "seed": None,
    "subseed": 0,
    "subseed_strength": 0.0,
}
INTS = ("steps", "width", "height", "batch_size", "seed", "subseed")
FLOATS = ("guidance_scale", "subseed_strength")

log = logging.getLogger(__name__)


class InvalidParams(Exception):
    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def model_names() -> list[str]:
    return list(registry.models())


def sampler_names() -> list[str]:
    return list(engine.SAMPLERS)


def form_initial(params: Mapping) -> dict:
    """The generate form's starting values: the defaults, overridden by query parameters
    (Remix links carry a recipe this way). Nothing here is trusted; submit validates."""
    initial = dict(
        DEFAULTS, model=settings.STUDIO_DEFAULT_MODEL, sampler=engine.DEFAULT_SAMPLER,
        guidance_scale=engine.DEFAULT_GUIDANCE, width=64, height=64,
    )
    for key in initial:
        if params.get(key) not in (None, ""):
            initial[key] = params.get(key)
    return initial


def too_long(params: Mapping) -> dict[str, str]:
    """An error for each field longer than STUDIO_MAX_TEXT_CHARS, checked before anything
    reads them: tokenizing or matching blocked phrases in megabytes would hold a thread."""
    limit = settings.STUDIO_MAX_TEXT_CHARS
    return {
        key: f"Enter at most {limit:,} characters."
        for key in (*DEFAULTS, "model")
        if isinstance(value := params.get(key), str) and len(value) > limit
    }


def parse_params(params: Mapping) -> dict:
    """Types each field; one error per field that is not of its type. Empty means default.
    Text over STUDIO_MAX_TEXT_CHARS is refused before it is read (too_long)."""
    if errors := too_long(params):
        raise InvalidParams(errors)
    values, errors = {}, {}
    for key, default in DEFAULTS.items():
        raw = params.get(key)
        raw = raw.strip() if isinstance(raw, str) else raw
        if raw in (None, ""):
            values[key] = default
            continue
        try:
            if key in INTS:
                values[key] = int(raw)
            elif key in FLOATS:
                values[key] = float(raw)
            elif "\x00" in str(raw):
                # Postgres cannot store a NUL character in text.
                errors[key] = "Remove the NUL character."
            else:
                values[key] = str(raw)
        except (TypeError, ValueError):
            kind = "a whole number" if key in INTS else "a number"
            errors[key] = f"Enter {kind}."
    values["model"] = str(params.get("model") or settings.STUDIO_DEFAULT_MODEL)
    if errors:
        raise InvalidParams(errors)
    return values


def blocked_phrase_in(prompt: str) -> str | None:
    """The first blocked phrase the prompt contains (ignoring case), or None."""
    lowered = prompt.lower()
    for phrase in BlockedPhrase.objects.values_list("phrase", flat=True):
        if phrase.lower() in lowered:
            return phrase
    return None


def recipe_from_params(params: Mapping) -> dict:
    """Validated recipe JSON from request parameters.

    1. Type each field (InvalidParams names the fields that fail).
    2. Refuse a prompt with a blocked phrase; resolve the model name to its source.
    3. Let the engine fill its defaults (a random seed among them, recorded in the recipe)
       and validate the whole recipe against the model's limits.
    """
    values = parse_params(params)
    blocked = blocked_phrase_in(values["prompt"])
    if blocked:
        raise InvalidParams(
            {"prompt": f"The prompt contains “{blocked}”, which this server does not allow."}
        )
    name = values.pop("model")
    try:
        model = registry.get(name)
    except engine.ModelLoadError as exc:
        # The reason names the model's files on this server: for the log, not the caller.
        log.warning("model %r cannot be read: %s", name, exc)
        raise InvalidParams({"model": "This model cannot be read right now."}) from exc
    if model is None:
        raise InvalidParams({"model": "Unknown model. Choose one of: " + ", ".join(model_names())})
    chosen = {key: value for key, value in values.items() if value is not None}
    try:
        recipe = engine.build_recipe(model=model, **chosen)
    except engine.RecipeError as exc:
        raise InvalidParams(exc.errors) from exc
    return recipe.to_json()
