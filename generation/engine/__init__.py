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

Models (``families.py``, ``checkpoints.py``, ``specs.py``, ``models.py``, ``vae_tiling.py``)
    A source is a diffusers folder, a hub id, or one ``.safetensors`` checkpoint in the
    original SD layout (SD 1.x, 2.x, SDXL base; configs shipped, or named by a
    ``<stem>.studio.json`` beside it); ``.ckpt`` pickles are refused unopened.
    weights_hash(source)                       sha256 of the weight files (a single file: of
                                               the whole file, as A1111), cached by mtime
    load_spec(source) -> ModelSpec             family, limits and tokenizer, without the weights
    FAMILIES, Family                           sd1, sd2, sdxl: pipeline, configs, how detected
    inspect_checkpoint(path) -> Checkpoint     a single file checked and classified, its configs
    read_header(path) -> Header                a safetensors header, checked against the file
    resolve_device(setting) -> (device, dtype) cuda: bf16/fp16 + SDPA; cpu: fp32
    load_pipeline(source, *, device, dtype, fast_path=FastPath())
                                               cached per (source, device, dtype, fast path's
                                               compile and memory format); safetensors
    pipeline_loaded(source, *, device, dtype)  whether load_pipeline has it cached already
    ModelLoadError, StudioPipeline (SD 1.x, 2.x), StudioXLPipeline (SDXL)

The GPU fast path (``fast_path.py``, ``recipe.py``, light; ``fast_pipeline.py``)
    FastPath(compile, channels_last, fused_qkv), COMPILE_MODES   a recipe's ``fast_path``
    run_fast_path(recipe, default) -> FastPath the one a recipe runs with: its own, none for
                                               an older recipe, else the worker's
    warm_up(pipeline) -> seconds               a compiled pipeline's first runs, done now

Samplers (``sampler_names.py``, ``schedules.py``, ``samplers.py``)
    SAMPLERS                                   A1111 name -> (scheduler class name, overrides)
    make_scheduler(name, base_config, seed, batch_size=1)

Generation (``sampling.py``, ``stepper.py``, ``image_runs.py``, ``previews.py``)
    generate(recipe, *, pipeline=None, on_step=None, should_cancel=None, preview=Previews(),
             inputs=None, fast_path=None)
        -> Result(images, recipes, timings, canceled)
        on_step(step, total, preview | None, elapsed_seconds) after each of the
        ``total = steps_run(recipe)`` steps actually run (every pass of img2img, inpainting
        and a hires fix), in order, on the sampling thread (a failure in it stops the run);
        should_cancel() after each model call, stopping within one step.
    StepPreview (LatentPreview | DecodedPreview): picklable arrays; render(index=None) ->
        image bytes, the batch side by side or its image at ``index`` alone
    Previews(vae_every=0, max_size=256, format="WEBP"), fit_latent_rgb(pipeline)
    preview_part(preview, start, size)        a batch's preview cut to some of its images
    WeightsMismatchError, GenerationError, InputMissingError (light: errors.py)

Batches of several jobs (``batch_keys.py``, light; ``batches.py``)
    batch_key(recipe) -> str | None            equal for recipes that may share one batch;
                                               None: text to image only, no variation seed
    generate_batch(recipes, *, pipeline, ...)  -> Result: their images in one batch, each
                                               image's recipe that of a batch of that size
                                               with it at its place (docs/architecture.md §4.2)

PNG metadata and reproduction (``pngmeta.py``, ``comparison.py``, ``sampling.py``)
    png_with_recipe(image, recipe) -> bytes    tEXt ``parameters`` (A1111) + iTXt ``studio_recipe``
    read_png(bytes) -> (Recipe | None, parameters | None); parse_parameters(text) -> dict
        (ParametersTooLong over MAX_PARAMETERS_CHARS; a recipe chunk over MAX_RECIPE_CHARS
        or malformed is a RecipeError: both are read from files users upload)
    compare_images(a, b) -> Comparison(verdict, max_diff, psnr)
    reproduce(recipe, original, *, pipeline, inputs=None) -> (image, Comparison)

Image to image (``inputs.py``, ``input_checks.py``; heavy: ``image_runs.py``)
    ImageRef(sha256, width, height), MaskRef(sha256), Hires(scale, steps, strength, upscaler)
                                               a recipe's init_image, mask and hires parts
    UPSCALERS                                  the hires upscalers, A1111's names
    canonical_image(data, *, max_bytes, max_pixels) -> (png, ImageRef)
    canonical_mask(data, *, max_bytes, max_pixels) -> (png, MaskRef, (width, height))
    mask_from_alpha(data, ...) -> png | None   OpenAI's rule: transparent pixels are the mask
    open_header(data, *, max_bytes, max_pixels) -> PIL image opened lazily, its size checked
    decode_data_url(text, *, max_bytes) -> bytes   base64 or a data: URL, length capped first
    mask_size_error(image_ref, size) -> str | None   a mask must be its image's size
    InputError(ValueError)                     any of those refused; the caller names the field
    steps_run(recipe or its JSON) -> int       the steps a run counts to (on_step's total)
    generate(..., inputs={sha256: png})        InputMissingError(sha256) when one is not given

LoRAs (``loras.py``, ``lora_weights.py``)
    LoraRef(name, weight, hash)                a recipe's LoRA; ``hash`` the file's sha256
    inspect_lora(name, path) -> LoraFile       its layout and text width, from the header
    lora_mismatch(lora, width, title)          why it cannot apply to that model, or None
    a1111_hash(path)                           what A1111 writes under "Lora hashes"
    apply_loras(pipeline, [(name, path, hash, weight)])   activate them for the next run
        (``generate(..., lora_files={name: path})`` does it)

The forward process (``forward_process.py``)
    forward_frames(pipe, image, *, timesteps, seed, threads=None, on_frame=None)
        -> ForwardFrames(timesteps, alpha_bars, images, size, train_steps, seconds): the
        picture cropped to the model's native square, encoded (x0), and
        x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps at each t from one CPU-seeded
        noise, decoded; on_frame(done, total) after each decode
    scheduler_alpha_bars(pipe), noised(x0, noise, alpha_bar), frame_data_url(image)

Light and heavy names
    Recipes, specs, families, checkpoint headers, sampler names, validation, PNG metadata and
    comparison, image inputs and errors import neither torch nor diffusers (``specs.py``,
    ``families.py``, ``checkpoints.py``, ``schedules.py``, ``comparison.py``, ``inputs.py``,
    ``input_checks.py``, ``errors.py``); the web tier uses only those.
    Loading, sampling, previews and schedulers import on first use.
"""

import importlib

from .batch_keys import batch_key
from .checkpoints import Checkpoint, Header, inspect_checkpoint, read_header
from .comparison import DIFFERS, IDENTICAL, WITHIN_ONE_LEVEL, Comparison, compare_images
from .errors import GenerationError, InputMissingError, WeightsMismatchError
from .families import FAMILIES, Family
from .fast_path import COMPILE_MODES, FastPath
from .inputs import (
    MAX_INPUT_BYTES,
    MAX_INPUT_PIXELS,
    MAX_MASK_BLUR,
    UPSCALERS,
    Hires,
    ImageRef,
    InputError,
    MaskRef,
    canonical_image,
    canonical_mask,
    decode_data_url,
    mask_from_alpha,
    mask_size_error,
    open_header,
    open_input,
    steps_run,
)
from .loras import UNSAFE_NAME_CHARACTERS as LORA_NAME_UNSAFE
from .loras import LoraFile, a1111_hash, inspect_lora
from .loras import mismatch as lora_mismatch
from .pngmeta import (
    MAX_PARAMETERS_CHARS,
    MAX_RECIPE_CHARS,
    ParametersTooLong,
    format_parameters,
    parse_parameters,
    png_with_recipe,
    read_png,
)
from .recipe import (
    DEFAULT_GUIDANCE,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    MAX_BATCH,
    SEED_MAX,
    LoraRef,
    ModelRef,
    Recipe,
    RecipeError,
    SchedulerRef,
    Versions,
    random_seed,
    run_fast_path,
)
from .sampler_names import SAMPLERS
from .specs import ModelLoadError, ModelSpec, load_spec, weights_hash
from .validation import build_recipe, validate_recipe

# The names that need torch and diffusers, imported on first use: a web process validates and
# records recipes with the names above and never loads them (docs/architecture.md §1). No
# module is named like one of these names: importing it would bind the module to the name.
_HEAVY = {
    "sampling": ("Result", "generate", "reproduce", "warm_up"),
    "batches": ("generate_batch",),
    "models": (
        "StudioPipeline", "StudioXLPipeline", "load_pipeline", "pipeline_loaded", "resolve_device",
    ),
    "previews": (
        "DecodedPreview", "LatentPreview", "LatentRGB", "Previews", "StepPreview",
        "fit_latent_rgb", "preview_part",
    ),
    "samplers": ("make_scheduler",),
    "lora_weights": ("apply_loras",),
    "forward_process": (
        "ForwardFrames", "forward_frames", "frame_data_url", "noised", "scheduler_alpha_bars",
    ),
}
_HEAVY_MODULE = {name: module for module, names in _HEAVY.items() for name in names}


def __getattr__(name: str):
    if name not in _HEAVY_MODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HEAVY_MODULE[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "COMPILE_MODES",
    "FastPath",
    "run_fast_path",
    "warm_up",
    "MAX_INPUT_BYTES",
    "MAX_INPUT_PIXELS",
    "MAX_MASK_BLUR",
    "UPSCALERS",
    "Hires",
    "ImageRef",
    "InputError",
    "InputMissingError",
    "MaskRef",
    "canonical_image",
    "canonical_mask",
    "decode_data_url",
    "mask_from_alpha",
    "open_header",
    "mask_size_error",
    "open_input",
    "steps_run",
    "LORA_NAME_UNSAFE",
    "DEFAULT_GUIDANCE",
    "DEFAULT_SAMPLER",
    "DEFAULT_STEPS",
    "DIFFERS",
    "FAMILIES",
    "IDENTICAL",
    "MAX_BATCH",
    "MAX_PARAMETERS_CHARS",
    "MAX_RECIPE_CHARS",
    "SAMPLERS",
    "SEED_MAX",
    "WITHIN_ONE_LEVEL",
    "Checkpoint",
    "Comparison",
    "DecodedPreview",
    "Family",
    "GenerationError",
    "Header",
    "LatentPreview",
    "LatentRGB",
    "LoraFile",
    "LoraRef",
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
    "StudioXLPipeline",
    "Versions",
    "WeightsMismatchError",
    "a1111_hash",
    "apply_loras",
    "batch_key",
    "build_recipe",
    "compare_images",
    "fit_latent_rgb",
    "preview_part",
    "format_parameters",
    "generate",
    "generate_batch",
    "inspect_lora",
    "lora_mismatch",
    "inspect_checkpoint",
    "load_pipeline",
    "load_spec",
    "make_scheduler",
    "parse_parameters",
    "pipeline_loaded",
    "png_with_recipe",
    "random_seed",
    "read_header",
    "read_png",
    "reproduce",
    "resolve_device",
    "validate_recipe",
    "weights_hash",
    "ForwardFrames",
    "forward_frames",
    "frame_data_url",
    "noised",
    "scheduler_alpha_bars",
]
