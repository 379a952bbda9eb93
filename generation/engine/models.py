"""Loading models in a worker: device choice, the pipeline each family runs with, and a
per-process pipeline cache. What validation reads without the weights is in ``specs.py``.

A folder or hub model loads with ``from_pretrained``; a single ``.safetensors`` checkpoint
with ``from_single_file``, its configs and tokenizers from the folder ``checkpoints.py`` found
for it and the scheduler its spec names, with no hub access.
"""

import threading

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .checkpoints import Checkpoint, inspect_checkpoint, is_single_file
from .families import FAMILIES, family_of
from .samplers import scheduler_class
from .specs import ModelLoadError, ModelSpec, config_tokenizer, load_spec, spec_from_configs

# The step callback also reads the guided model output and the model's input: previews
# compute the predicted clean latent from them (``previews.py``). Both pipelines' loops have
# these locals; tests/generation/test_engine_families.py checks each by name.
_STEP_TENSORS = ["noise_pred", "latent_model_input"]


class StudioPipeline(StableDiffusionPipeline):
    """The stock SD 1.x and 2.x pipeline, its step callback reading two more tensors."""

    _callback_tensor_inputs = [*StableDiffusionPipeline._callback_tensor_inputs, *_STEP_TENSORS]


class StudioXLPipeline(StableDiffusionXLPipeline):
    """The stock SDXL pipeline, its step callback reading two more tensors."""

    _callback_tensor_inputs = [*StableDiffusionXLPipeline._callback_tensor_inputs, *_STEP_TENSORS]


Pipeline = StudioPipeline | StudioXLPipeline
PIPELINE_CLASSES: dict[str, type[Pipeline]] = {
    "StableDiffusionPipeline": StudioPipeline,
    "StableDiffusionXLPipeline": StudioXLPipeline,
}
# Errors diffusers and transformers raise for files that are not what their configs say.
_LOAD_ERRORS = (OSError, ValueError, TypeError, KeyError)


def resolve_device(setting: str = "auto") -> tuple[torch.device, torch.dtype]:
    """The device and dtype a worker runs in, from ``STUDIO_DEVICE`` (auto|cpu|cuda).

    CUDA runs in half precision (bf16 where the card has it, else fp16); attention there is
    PyTorch's SDPA, which diffusers' default attention processor uses on torch 2. The CPU
    runs in fp32: half precision is slow there and changes the pixels.
    """
    if setting not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {setting!r}")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("STUDIO_DEVICE is cuda but no CUDA device is available")
    if setting == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu"), torch.float32
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.device("cuda"), dtype


_pipelines: dict[tuple[str, str, torch.dtype], Pipeline] = {}
_pipelines_lock = threading.Lock()


def load_pipeline(source: str, *, device: torch.device | str, dtype: torch.dtype) -> Pipeline:
    """The model's pipeline, loaded once per (source, device, dtype) in this process.

    Safetensors only: a directory with only pickled weights, or a ``.ckpt`` file, fails
    instead of running code. The pipeline is shared: ``generate`` never changes it, it builds
    a per-run view with its own scheduler (``run_view``).
    """
    key = (source, str(device), dtype)
    with _pipelines_lock:
        if key not in _pipelines:
            _pipelines[key] = _load(source, torch.device(device), dtype)
        return _pipelines[key]


def pipeline_loaded(source: str, *, device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether ``load_pipeline`` holds this pipeline already, and so returns it at once."""
    with _pipelines_lock:
        return (source, str(device), dtype) in _pipelines


def _load(source: str, device: torch.device, dtype: torch.dtype) -> Pipeline:
    cls = PIPELINE_CLASSES[FAMILIES[load_spec(source).family].pipeline]
    try:
        if is_single_file(source):
            pipe = _from_single_file(cls, inspect_checkpoint(source), dtype)
        else:
            pipe = cls.from_pretrained(source, dtype=dtype, use_safetensors=True, **_options(cls))
    except NotImplementedError as exc:  # a weight left on the meta device: not in the file
        raise ModelLoadError(f"{source}: weights its configs name are missing ({exc})") from exc
    except _LOAD_ERRORS as exc:
        raise ModelLoadError(f"{source}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _options(cls: type[Pipeline]) -> dict:
    """What every pipeline of the class is built with: no safety checker (Studio has its
    own moderation), and never SDXL's invisible watermark, which would make the pixels depend
    on whether its package happens to be installed."""
    if issubclass(cls, StableDiffusionXLPipeline):
        return {"add_watermarker": False}
    return {"safety_checker": None, "requires_safety_checker": False}


def _from_single_file(cls: type[Pipeline], checkpoint: Checkpoint, dtype: torch.dtype) -> Pipeline:
    """The checkpoint with its configs, tokenizers and scheduler given: nothing from the hub."""
    folder = checkpoint.config_dir
    names = ("tokenizer", "tokenizer_2") if issubclass(cls, StudioXLPipeline) else ("tokenizer",)
    tokenizers = {name: config_tokenizer(folder, name) for name in names}
    pipe = cls.from_single_file(
        str(checkpoint.path),
        config=str(folder),
        local_files_only=True,
        dtype=dtype,
        scheduler=_scheduler(checkpoint.scheduler_config()),
        **tokenizers,
        **_options(cls),
    )
    # from_single_file leaves a tensor the file lacks on the meta device, unreported.
    missing = sorted(
        name for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module) and any(p.is_meta for p in module.parameters())
    )
    if missing:
        raise ModelLoadError(
            f"{checkpoint.path}: weights its configs name are missing (in {', '.join(missing)})"
        )
    return pipe


def _scheduler(config: dict) -> SchedulerMixin:
    cls = scheduler_class(config.get("_class_name", ""))
    if cls is None:
        raise ModelLoadError(f"{config.get('_class_name')!r} is not a diffusers scheduler")
    return cls.from_config(config)


def run_view(shared: Pipeline, scheduler: SchedulerMixin) -> Pipeline:
    """A pipeline of the shared one's class over its modules, with this run's scheduler:
    nothing shared changes. SDXL's empty-negative-prompt rule is the model's own."""
    components = {**shared.components, "scheduler": scheduler}
    if isinstance(shared, StableDiffusionXLPipeline):
        pipe = StudioXLPipeline(
            **components,
            force_zeros_for_empty_prompt=shared.config.force_zeros_for_empty_prompt,
            add_watermarker=False,
        )
    else:
        pipe = StudioPipeline(**components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_spec(pipe: Pipeline) -> ModelSpec:
    """The spec of a loaded pipeline, as ``load_spec`` reads it from the files."""
    pipeline_class = (
        "StableDiffusionXLPipeline"
        if isinstance(pipe, StableDiffusionXLPipeline)
        else "StableDiffusionPipeline"
    )
    return spec_from_configs(
        family=family_of(pipeline_class, dict(pipe.unet.config)).name,
        tokenizer=pipe.tokenizer,
        scheduler=pipe.scheduler.config,
        unet=pipe.unet.config,
        vae=pipe.vae.config,
    )
