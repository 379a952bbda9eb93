"""From what a person asked for to a complete, validated recipe, before anything is queued."""

from dataclasses import replace
from typing import Any

from .input_checks import input_errors
from .inputs import ImageRef
from .recipe import (
    MAX_PROMPT_CHARS,
    SIZE_MULTIPLE,
    ModelRef,
    Recipe,
    RecipeError,
    check_numbers,
    random_seed,
    shown,
)
from .sampler_names import SAMPLERS
from .schedules import check_scheduler, resolved_ref
from .specs import ModelLoadError, ModelSpec, load_spec


def validate_recipe(recipe: Recipe, spec: ModelSpec | None = None) -> None:
    """Raise RecipeError with one message per bad field; ``spec`` defaults to the model's own.

    Every door calls this before a recipe is queued, and ``generate`` again before it builds
    anything, so a recipe read from a file is checked like one Studio made: numbers in their
    ranges, and a scheduler config key by key against the model's (``check_scheduler``).
    """
    if spec is None:
        try:
            spec = load_spec(recipe.model.source)
        except ModelLoadError as exc:
            raise RecipeError({"model": f"cannot be read: {exc}"}) from exc
    errors = check_numbers(recipe, spec.limits)
    if not isinstance(recipe.sampler, str) or recipe.sampler not in SAMPLERS:
        errors["sampler"] = f"unknown sampler {shown(recipe.sampler)}; known: {', '.join(SAMPLERS)}"
    # The expected scheduler depends on these (the SDE sampler's seeds), so only valid ones.
    if recipe.scheduler is not None and not errors.keys() & {"sampler", "seed", "batch_size"}:
        errors.update(check_scheduler(recipe.scheduler, recipe.sampler, spec.scheduler_config,
                                      recipe.seed, recipe.batch_size))
    errors.update(_prompt_errors(recipe, spec))
    errors.update(input_errors(recipe, spec.limits, inpainting=spec.inpainting))
    if errors:
        raise RecipeError(errors)


def _prompt_errors(recipe: Recipe, spec: ModelSpec) -> dict[str, str]:
    """Prompts longer than the text encoder reads are errors: the pipeline would cut them
    silently, and the image would not show what the recipe says."""
    errors, limit = {}, spec.limits.max_prompt_tokens
    for key in ("prompt", "negative_prompt"):
        text = getattr(recipe, key)
        if not isinstance(text, str):
            errors[key] = "must be text"
        elif len(text) > MAX_PROMPT_CHARS:  # before the tokenizer reads it
            errors[key] = f"is {len(text)} characters long; the most is {MAX_PROMPT_CHARS}"
        elif (count := spec.prompt_tokens(text)) > limit:
            errors[key] = f"is {count} tokens long; this model reads at most {limit}"
    return errors


def build_recipe(
    *,
    model: ModelRef,
    seed: int | None = None,
    width: int | None = None,
    height: int | None = None,
    **fields: Any,
) -> Recipe:
    """A validated recipe with its scheduler resolved, ready to store with a job. ``fields``
    are the recipe's own (``prompt``, ``sampler``, ``steps``, ``loras``, ``init_image``, …),
    each at the recipe's default when left out.

    1. Read the model's spec: configs and tokenizer, not the weights.
    2. Fill the defaults: a random seed (stored, so the recipe says which seed ran) and the
       size: an init image's, down to a multiple of 8, else the model's native size.
    3. Validate every field, then resolve the sampler to its full scheduler config.
    The model's hash, and each LoRA's, is the caller's: building a recipe never reads the
    weights, since a checkpoint of gigabytes takes seconds to hash and web requests build
    recipes. ``generate`` fills an empty hash from the files and refuses one that differs.
    Device, dtype and threads stay empty too: the worker that runs it fills them in.
    """
    try:
        spec = load_spec(model.source)
    except ModelLoadError as exc:
        raise RecipeError({"model": f"cannot be read: {exc}"}) from exc
    default_width, default_height = _default_size(fields.get("init_image"), spec.native_size)
    recipe = Recipe(
        model=replace(model, family=spec.family),
        seed=random_seed() if seed is None else seed,
        width=default_width if width is None else width,
        height=default_height if height is None else height,
        **{**fields, "loras": tuple(fields.get("loras", ()))},
    )
    validate_recipe(recipe, spec)
    scheduler = resolved_ref(recipe.sampler, spec.scheduler_config, recipe.seed,
                             recipe.batch_size)
    return replace(recipe, scheduler=scheduler)


def _default_size(image: ImageRef | None, native: int) -> tuple[int, int]:
    if image is None or not isinstance(image.width, int) or not isinstance(image.height, int):
        return native, native
    def down(side: int) -> int:
        return side // SIZE_MULTIPLE * SIZE_MULTIPLE

    return down(image.width), down(image.height)
