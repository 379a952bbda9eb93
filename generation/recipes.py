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
from .job_request import FIELDS, JobRequest, LoraChoice, Refused, lora_names, model_names, parse
from .models import BlockedPhrase, Job

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
        if params.get(key) not in (None, ""):
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
        key: value for key, value in dataclasses.asdict(request).items()
        if value is not None and key not in ("model", "loras")
    }
    try:
        recipe = engine.build_recipe(model=model, loras=lora_refs(request.loras, model), **chosen)
    except engine.RecipeError as exc:
        raise Refused(exc.errors) from exc
    return recipe.to_json()


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
    """Queue the request as `user`'s job. Raises Refused: for its fields (INVALID), or when a
    per-user limit is reached (LIMIT, with when to retry)."""
    recipe = recipe_for(request)
    try:
        return services.job_submit(user=user, recipe=recipe)
    except services.LimitExceeded as exc:
        raise Refused({"__all__": str(exc)}, retry_after=exc.retry_after) from exc
