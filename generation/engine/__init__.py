"""Studio's generation engine: plain Python over torch and diffusers, no Django
(docs/architecture.md §2).

The contract other code calls (the Celery task, the websocket consumer, the gallery's
reproduce-and-verify, the A1111 and OpenAI endpoints, the CLI). Names here are stable.

Recipes (``recipe.py``, ``validation.py``)
    Recipe, ModelRef, SchedulerRef, Versions   the docs/architecture.md §4 recipe; ``to_json()`` and
                                               ``Recipe.from_json(dict)`` give exactly its keys
    build_recipe(*, model, prompt, ...)        defaults filled, validated, sampler resolved
    validate_recipe(recipe, spec=None)         raises RecipeError(errors: {field: message});
                                               a scheduler config passes only key by key
                                               against the model's own (check_scheduler)
    RecipeError, DEFAULT_SAMPLER, DEFAULT_GUIDANCE, DEFAULT_STEPS, SEED_MAX, MAX_BATCH

Models (``models.py``)
    resolve_device(setting) -> (device, dtype) cuda: bf16/fp16 + SDPA; cpu: fp32
    load_pipeline(source, *, device, dtype)    cached per (source, device, dtype); safetensors
    pipeline_loaded(source, *, device, dtype)  whether load_pipeline has it cached already
    weights_hash(source)                       sha256 of the weight files, cached by mtime
    load_spec(source) -> ModelSpec             limits and tokenizer, without the weights
    ModelLoadError, StudioPipeline

Samplers (``samplers.py``)
    SAMPLERS                                   A1111 name -> (scheduler class, overrides)
    make_scheduler(name, base_config, seed, batch_size=1)

Generation (``generate.py``, ``previews.py``)
    generate(recipe, *, pipeline=None, on_step=None, should_cancel=None, preview=Previews())
        -> Result(images, recipes, timings, canceled)
        on_step(step, total, preview | None, elapsed_seconds) after each of ``steps``
        steps, in order, on the sampling thread (a failure in it stops the run there);
        should_cancel() after each model call, stopping within one step.
    StepPreview (LatentPreview | DecodedPreview): picklable arrays; render(index=None) ->
        image bytes, the batch side by side or its image at ``index`` alone
    Previews(vae_every=0, max_size=256, format="WEBP"), fit_latent_rgb(pipeline)
    WeightsMismatchError, GenerationError

PNG metadata and reproduction (``pngmeta.py``, ``reproduce.py``)
    png_with_recipe(image, recipe) -> bytes    tEXt ``parameters`` (A1111) + iTXt ``studio_recipe``
    read_png(bytes) -> (Recipe | None, parameters | None); parse_parameters(text) -> dict
        (ParametersTooLong over MAX_PARAMETERS_CHARS; a recipe chunk over MAX_RECIPE_CHARS
        or malformed is a RecipeError: both are read from files users upload)
    compare_images(a, b) -> Comparison(verdict, max_diff, psnr)
    reproduce(recipe, original, *, pipeline) -> (image, Comparison)
"""

from .generate import GenerationError, Result, WeightsMismatchError, generate
from .models import (
    ModelLoadError,
    ModelSpec,
    StudioPipeline,
    load_pipeline,
    load_spec,
    pipeline_loaded,
    resolve_device,
    weights_hash,
)
from .pngmeta import (
    MAX_PARAMETERS_CHARS,
    MAX_RECIPE_CHARS,
    ParametersTooLong,
    format_parameters,
    parse_parameters,
    png_with_recipe,
    read_png,
)
from .previews import (
    DecodedPreview,
    LatentPreview,
    LatentRGB,
    Previews,
    StepPreview,
    fit_latent_rgb,
)
from .recipe import (
    DEFAULT_GUIDANCE,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    MAX_BATCH,
    SEED_MAX,
    ModelRef,
    Recipe,
    RecipeError,
    SchedulerRef,
    Versions,
)
from .reproduce import DIFFERS, IDENTICAL, WITHIN_ONE_LEVEL, Comparison, compare_images, reproduce
from .samplers import SAMPLERS, make_scheduler
from .seeds import random_seed
from .validation import build_recipe, validate_recipe

__all__ = [
    "DEFAULT_GUIDANCE",
    "DEFAULT_SAMPLER",
    "DEFAULT_STEPS",
    "DIFFERS",
    "IDENTICAL",
    "MAX_BATCH",
    "MAX_PARAMETERS_CHARS",
    "MAX_RECIPE_CHARS",
    "SAMPLERS",
    "SEED_MAX",
    "WITHIN_ONE_LEVEL",
    "Comparison",
    "DecodedPreview",
    "GenerationError",
    "LatentPreview",
    "LatentRGB",
    "ModelLoadError",
    "ModelRef",
    "ModelSpec",
    "ParametersTooLong",
    "Previews",
    "Recipe",
    "RecipeError",
    "Result",
    "SchedulerRef",
    "StepPreview",
    "StudioPipeline",
    "Versions",
    "WeightsMismatchError",
    "build_recipe",
    "compare_images",
    "fit_latent_rgb",
    "format_parameters",
    "generate",
    "load_pipeline",
    "load_spec",
    "make_scheduler",
    "parse_parameters",
    "pipeline_loaded",
    "png_with_recipe",
    "random_seed",
    "read_png",
    "reproduce",
    "resolve_device",
    "validate_recipe",
    "weights_hash",
]
