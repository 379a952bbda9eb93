"""Several jobs' text-to-image recipes run as one engine batch (docs/architecture.md §3.3,
§4.2): the stock pipeline given the jobs' prompt embeddings and per-image generators, so
each image is made as it would be in a run of that batch's size.

Why it reproduces: on the same device, threads and batch size an image's pixels do not
depend on the other images of its batch (each image's noise comes from its own generator;
its prompts are encoded alone, as a stock call with one prompt encodes them; every layer
works per image), only on the batch's size, which changes how batched kernels round. So
each image's recipe records its merged batch as a batch of that size
(``merged_recipe``), and ``reproduce`` re-runs a batch of that size with the image at its
place: tests/generation/test_batching.py holds the pixels to it.
"""

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline

from .batch_keys import batch_key
from .errors import GenerationError
from .fast_path import FastPath
from .fast_pipeline import fused_attention
from .image_runs import decode
from .models import Pipeline, execution_device, in_use, pipeline_spec
from .previews import DEFAULT_PREVIEWS, Previews
from .recipe import Recipe
from .sampling import (
    Result,
    _canceled,
    _fast,
    _latent_rgb,
    _prepared,
    _resolved,
    _tiled,
    _with_checked_hashes,
    pinned_threads,
    stock_denoise,
)
from .seeds import seeded
from .specs import weights_hash
from .stepper import OnStep, ShouldCancel, Stepper
from .vae_tiling import decode_in_tiles
from .validation import validate_recipe

# What encode_prompt returns, in order, as the pipelines take them.
_EMBEDS = ("prompt_embeds", "negative_prompt_embeds")
_EMBEDS_XL = (*_EMBEDS, "pooled_prompt_embeds", "negative_pooled_prompt_embeds")


def generate_batch(
    recipes: Sequence[Recipe], *, pipeline: Pipeline, on_step: OnStep | None = None,
    should_cancel: ShouldCancel | None = None, preview: Previews | None = DEFAULT_PREVIEWS,
    lora_files: Mapping[str, Path] | None = None, hashes: Callable[[str], str] = weights_hash,
    vae_tiling: str = "off", fast_path: FastPath | None = None) -> Result:
    """Make the images of every recipe (each a job's whole batch, all with one
    ``batch_key``) in one batch, recipe after recipe, as ``generate`` would make each.

    1. Validate each recipe and check its hashes; apply the LoRAs they share.
    2. Resolve the run as ``generate`` does (``fast_path`` too), for all their images.
    3. Denoise from each image's own seed (its recipe's seed + i) and its own recipe's
       prompt embeddings; ``on_step`` gets the whole batch's preview.
    4. Decode. ``Result.recipes`` holds each image's ``merged_recipe``.
    """
    if len({batch_key(recipe) for recipe in recipes}) != 1 or batch_key(recipes[0]) is None:
        raise GenerationError("these recipes cannot run as one batch")
    started = time.perf_counter()
    lora_files = lora_files or {}
    offsets = list(itertools.accumulate((r.batch_size for r in recipes), initial=0))
    with in_use(pipeline):
        first, pipe, _ = _prepared(recipes[0], pipeline, lora_files, hashes, None)
        spec = pipeline_spec(pipeline)
        checked = [first]
        for recipe in recipes[1:]:
            validate_recipe(recipe, spec)
            checked.append(_with_checked_hashes(recipe, spec.family, lora_files, hashes))
        whole = replace(first, batch_size=offsets[-1], batch_index=0)
        whole = _resolved(_fast(_tiled(whole, pipeline, vae_tiling), pipeline, fast_path), pipe)
        stepper = Stepper(whole, on_step, should_cancel, preview,
                          _latent_rgb(whole, pipe, preview))
        if should_cancel is not None and should_cancel():
            return _canceled(stepper, 0.0)
        with (pinned_threads(whole.threads), decode_in_tiles(pipe, whole.vae_tiling),
              fused_attention(pipe, whole.fast_path.fused_qkv)):
            stepper.start()
            stepper.begin_pass(whole.steps, pipe)
            latents = _denoise(pipe, whole, checked, stepper)
            if stepper.canceled:
                return _canceled(stepper, 0.0)
            if not torch.isfinite(latents).all():
                raise GenerationError(f"{whole.sampler} produced non-finite latents")
            decode_started = time.perf_counter()
            images = decode(pipe, latents)
    timings = {**stepper.timings(0.0), "total": time.perf_counter() - started,
               "decode": time.perf_counter() - decode_started}
    merged = [merged_recipe(recipe, whole, offset=offset, index=i)
              for recipe, offset in zip(checked, offsets, strict=False)
              for i in range(recipe.batch_size)]
    return Result(images=images, recipes=merged, timings=timings)


def merged_recipe(recipe: Recipe, whole: Recipe, *, offset: int, index: int) -> Recipe:
    """The recipe of image ``index`` of a job's ``recipe`` whose images began at ``offset``
    of the merged batch ``whole``: the run's resolved fields, and a batch of the merged
    batch's size with the image at its place there (``batch_index``) and its own seed
    (``seed + batch_index``, as every recipe numbers them). Its siblings in that batch are
    not the ones it had (they were other jobs'); they do not change its pixels (this
    module's docstring). A job's seed is at least its offset (generation/batching.py), so
    the batch's seed is never negative."""
    return replace(
        recipe, scheduler=whole.scheduler, dtype=whole.dtype, device=whole.device,
        threads=whole.threads, versions=whole.versions, vae_tiling=whole.vae_tiling,
        fast_path=whole.fast_path, seed=recipe.seed - offset, batch_size=whole.batch_size,
        batch_index=offset + index,
    )


def _denoise(pipe: Pipeline, whole: Recipe, recipes: list[Recipe], stepper: Stepper):
    """The stock text-to-image loop over the merged batch, to its final latents: each image
    from its own seed's noise and generator (as ``sampling._denoise`` draws a batch's)."""
    image_generators = seeded(r.seed + i for r in recipes for i in range(r.batch_size))
    return stock_denoise(pipe, whole, stepper, _prompt_embeds(pipe, recipes), image_generators)


def _prompt_embeds(pipe: Pipeline, recipes: list[Recipe]) -> dict[str, torch.Tensor]:
    """Each recipe's prompts encoded alone and repeated for its images, with the pipeline's
    own ``encode_prompt`` (what a stock call with that one prompt runs), in batch order."""
    names = _EMBEDS_XL if isinstance(pipe, StableDiffusionXLPipeline) else _EMBEDS
    device = execution_device(pipe)
    with torch.no_grad():
        parts = [
            pipe.encode_prompt(
                prompt=recipe.prompt, device=device, num_images_per_prompt=recipe.batch_size,
                do_classifier_free_guidance=True, negative_prompt=recipe.negative_prompt or None,
            )
            for recipe in recipes
        ]
    return {name: torch.cat([part[k] for part in parts]) for k, name in enumerate(names)}
