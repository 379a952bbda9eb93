"""From a request (generation/job_request.py) to a validated recipe (docs/architecture.md §4)
and a queued job: `submit`, the one service the generate page and the APIs call.

Validation happens once, loudly, before anything is queued: each bad field gets its own
message, named after the field, in one Refused.
"""

import dataclasses
import logging
from collections.abc import Mapping

from . import engine, registry, services
from .job_request import FIELDS, JobRequest, Refused, model_names, parse
from .models import BlockedPhrase, Job

log = logging.getLogger(__name__)


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
        if params.get(key) not in (None, ""):
            initial[key] = params.get(key)
    spec = model_spec(str(initial["model"]))
    for field in FIELDS:
        if field.sized and initial[field.name] is None and spec is not None:
            initial[field.name] = spec.native_size
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
        key: value for key, value in dataclasses.asdict(request).items()
        if value is not None and key != "model"
    }
    try:
        recipe = engine.build_recipe(model=model, **chosen)
    except engine.RecipeError as exc:
        raise Refused(exc.errors) from exc
    return recipe.to_json()


def recipe_from_params(params: Mapping) -> dict:
    """Validated recipe JSON from field names and values (parse, then recipe_for): for
    scripts and tests that make a recipe without a door."""
    return recipe_for(parse(params))


def submit(*, user, request: JobRequest) -> Job:
    """Queue the request as `user`'s job. Raises Refused: for its fields (INVALID), or when a
    per-user limit is reached (LIMIT, with when to retry)."""
    recipe = recipe_for(request)
    try:
        return services.job_submit(user=user, recipe=recipe)
    except services.LimitExceeded as exc:
        raise Refused({"__all__": str(exc)}, retry_after=exc.retry_after) from exc
