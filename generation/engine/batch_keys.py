"""Which recipes may share one engine batch (docs/architecture.md §3.3): light, so the claim
(generation/batching.py) reads it without torch."""

import json

from .recipe import Recipe
from .sampler_names import SEEDED_CLASS

# What each job of a merged batch keeps of its own; everything else its batch shares.
PER_JOB = ("prompt", "negative_prompt", "seed", "batch_size", "batch_index", "subseed")


def batch_key(recipe: Recipe) -> str | None:
    """Equal for recipes that may run as one batch (``batches.generate_batch``); None for a
    recipe that always runs alone.

    Only text to image without a variation seed is merged: an input image, a mask or a
    hires fix runs passes a merged batch does not share, a variation blends each image's
    noise with a second seed, and the SDE sampler's config holds its batch's seeds. The
    rest of the recipe (model, size, sampler and its config, steps, guidance, LoRAs, what
    the worker fills in) must be equal, so the batch runs one scheduler on one pipeline.
    """
    if recipe.init_image is not None or recipe.mask is not None or recipe.hires is not None:
        return None
    if recipe.subseed_strength or recipe.scheduler is None:
        return None
    if recipe.scheduler.class_name == SEEDED_CLASS:
        return None
    shared = {key: value for key, value in recipe.to_json().items() if key not in PER_JOB}
    return json.dumps(shared, sort_keys=True)
