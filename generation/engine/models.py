"""Loading models in a worker: device choice, the pipeline each family runs with, a
per-process pipeline cache kept within a memory budget, and model CPU offload (VAE tiling is
in ``vae_tiling.py``). What validation reads without the weights is in ``specs.py``.

A folder or hub model loads with ``from_pretrained``; a single ``.safetensors`` checkpoint
with ``from_single_file``, its configs and tokenizers from the folder ``checkpoints.py`` found
for it and the scheduler its spec names, with no hub access.
"""

import gc
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain

import torch
from diffusers import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .checkpoints import Checkpoint, checked_path, inspect_checkpoint, is_single_file, read_header
from .families import FAMILIES, family_of, read_json
from .fast_path import OFF, FastPath
from .fast_pipeline import check_fast_path, prepare
from .samplers import scheduler_class
from .specs import (
    ModelLoadError,
    ModelSpec,
    config_tokenizer,
    load_spec,
    model_dir,
    spec_from_configs,
)

log = logging.getLogger(__name__)

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


class StudioImg2ImgPipeline(StableDiffusionImg2ImgPipeline):
    _callback_tensor_inputs = [*StableDiffusionImg2ImgPipeline._callback_tensor_inputs,
                               *_STEP_TENSORS]


class StudioXLImg2ImgPipeline(StableDiffusionXLImg2ImgPipeline):
    _callback_tensor_inputs = [*StableDiffusionXLImg2ImgPipeline._callback_tensor_inputs,
                               *_STEP_TENSORS]


class StudioInpaintPipeline(StableDiffusionInpaintPipeline):
    _callback_tensor_inputs = [*StableDiffusionInpaintPipeline._callback_tensor_inputs,
                               *_STEP_TENSORS]


class StudioXLInpaintPipeline(StableDiffusionXLInpaintPipeline):
    _callback_tensor_inputs = [*StableDiffusionXLInpaintPipeline._callback_tensor_inputs,
                               *_STEP_TENSORS]


Pipeline = StudioPipeline | StudioXLPipeline
# Per workflow, the pipeline a run builds over the shared one's modules (``run_view``):
# SD 1.x/2.x, then SDXL.
WORKFLOWS = {
    "txt2img": (StudioPipeline, StudioXLPipeline),
    "img2img": (StudioImg2ImgPipeline, StudioXLImg2ImgPipeline),
    "inpaint": (StudioInpaintPipeline, StudioXLInpaintPipeline),
}
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


# (source, device, dtype, offloaded, fast path as loaded) -> the pipeline, least recently
# used first.
_Key = tuple[str, str, torch.dtype, bool, FastPath]
_pipelines: OrderedDict[_Key, Pipeline] = OrderedDict()
# id(pipeline) -> how many runs use it now (``in_use``): no load evicts those.
_runs: dict[int, int] = {}
_pipelines_lock = threading.Lock()
# Where an offloaded pipeline computes; its weights' own device is the CPU between runs.
_OFFLOAD_DEVICE = "_studio_offload_device"


def load_pipeline(
    source: str,
    *,
    device: torch.device | str,
    dtype: torch.dtype,
    budget_bytes: int = 0,
    cpu_offload: bool = False,
    fast_path: FastPath = OFF,
) -> Pipeline:
    """The model's pipeline, loaded once per (source, device, dtype, offload, fast path's
    compile mode and memory format) in this process, and prepared for ``fast_path``
    (``fast_pipeline.prepare``; GenerationError where this device cannot run it).

    Safetensors only: a directory with only pickled weights, or a ``.ckpt`` file, fails
    instead of running code. The pipeline is shared: ``generate`` never changes it, it builds
    a per-run view with its own scheduler (``run_view``).

    ``budget_bytes`` (0: no limit) bounds the weights this process keeps loaded
    (``pipeline_bytes``). Before a load, the least recently used pipelines that no run is
    using (``in_use``) are dropped until the new one, as its files' headers count it
    (``estimated_bytes``), fits beside the rest; after it, until its measured weights do. A
    model larger than the whole budget still loads, the others dropped, with a warning: the
    budget bounds what a worker keeps, not which models people may use.

    ``cpu_offload``: diffusers' model CPU offload. The weights stay in RAM and each model
    moves to the GPU while it runs: same pixels, slower steps, for a GPU too small for the
    pipeline. CUDA only; elsewhere it means nothing and is ignored, with a log line.
    """
    device = torch.device(device)
    key = _key(source, device, dtype, cpu_offload, fast_path)
    with _pipelines_lock:
        if key in _pipelines:
            _pipelines.move_to_end(key)
            return _pipelines[key]
        if cpu_offload and not key[3]:
            log.info("model CPU offload is for CUDA: %s loads on %s without it", source, device)
        check_fast_path(fast_path, device, offloaded=key[3])
        if budget_bytes:
            _evict(budget_bytes, incoming=estimated_bytes(source, dtype))
        pipe = _load(source, device, dtype, offload=key[3])
        prepare(pipe, fast_path, device=device, offloaded=key[3])
        _pipelines[key] = pipe
        if budget_bytes:
            _evict(budget_bytes, loaded=key)
        return _pipelines[key]


def pipeline_loaded(
    source: str, *, device: torch.device | str, dtype: torch.dtype, cpu_offload: bool = False,
    fast_path: FastPath = OFF,
) -> bool:
    """Whether ``load_pipeline`` holds this pipeline already, and so returns it at once."""
    with _pipelines_lock:
        return _key(source, torch.device(device), dtype, cpu_offload, fast_path) in _pipelines


def _key(source: str, device: torch.device, dtype: torch.dtype, cpu_offload: bool,
         fast_path: FastPath) -> _Key:
    return source, str(device), dtype, cpu_offload and device.type == "cuda", fast_path.loaded


@contextmanager
def in_use(pipe: Pipeline) -> Iterator[Pipeline]:
    """Mark a shared pipeline as used by a run (``generate`` does): no load evicts it
    meanwhile, and it counts as used when the run starts and when it ends."""
    with _pipelines_lock:
        _runs[id(pipe)] = _runs.get(id(pipe), 0) + 1
        _touch(pipe)
    try:
        yield pipe
    finally:
        with _pipelines_lock:
            _runs[id(pipe)] -= 1
            if not _runs[id(pipe)]:
                del _runs[id(pipe)]
            _touch(pipe)


def _touch(pipe: Pipeline) -> None:
    for key, cached in _pipelines.items():
        if cached is pipe:
            _pipelines.move_to_end(key)
            return


def _evict(budget: int, *, incoming: int = 0, loaded: _Key | None = None) -> None:
    """Drop the least recently used pipelines that no run uses, never the one just
    ``loaded``, until the cache and ``incoming`` bytes fit the budget; warn if they cannot."""
    sizes = {key: pipeline_bytes(pipe) for key, pipe in _pipelines.items()}
    dropped = False
    for key in list(_pipelines):
        if sum(sizes.values()) + incoming <= budget:
            break
        if key != loaded and not _runs.get(id(_pipelines[key])):
            log.info("dropped the model %s (%s) to stay within the budget of %s",
                     key[0], _mb(sizes.pop(key)), _mb(budget))
            del _pipelines[key]
            dropped = True
    if dropped:
        gc.collect()  # a pipeline's modules hold reference cycles
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    total = sum(sizes.values())
    if loaded is not None and total > budget:
        if sizes[loaded] > budget:
            log.warning("the model %s takes %s, more than the whole budget of %s: loaded anyway",
                        loaded[0], _mb(sizes[loaded]), _mb(budget))
        else:
            log.warning("models in use keep %s loaded, beyond the budget of %s",
                        _mb(total), _mb(budget))


def _mb(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


def pipeline_bytes(pipe: Pipeline) -> int:
    """The bytes a pipeline's weights take: every parameter and buffer of its models (UNet,
    VAE, text encoders), with the LoRA adapters loaded into them."""
    modules = [module for module in pipe.components.values()
               if isinstance(module, torch.nn.Module)]
    return sum(tensor.numel() * tensor.element_size()
               for module in modules for tensor in chain(module.parameters(), module.buffers()))


# The models a folder's pipeline loads weights for: never its safety checker.
_WEIGHTED = ("unet", "vae", "text_encoder", "text_encoder_2")
# A single file's copy of the UNet's moving average, which the loader skips.
_EMA_PREFIX = "model_ema."
_FLOATS = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
_ITEM_BYTES = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def estimated_bytes(source: str, dtype: torch.dtype) -> int:
    """What ``pipeline_bytes`` will be once the model is loaded in ``dtype``, from its files'
    safetensors headers alone: floating-point weights count at ``dtype``'s size."""
    if is_single_file(source):
        header = read_header(checked_path(source))
        tensors = [tensor for name, tensor in header.tensors.items()
                   if not name.startswith(_EMA_PREFIX)]
    else:
        root = model_dir(source)
        # Not a variant's file (name.fp16.safetensors): from_pretrained reads none.
        files = [path for name in _WEIGHTED for path in (root / name).glob("*.safetensors")
                 if "." not in path.stem]
        tensors = [tensor for path in files for tensor in read_header(path).tensors.values()]
    return sum(
        math.prod(tensor.shape)
        * (dtype.itemsize if tensor.dtype in _FLOATS else _ITEM_BYTES.get(tensor.dtype, 1))
        for tensor in tensors
    )


def _load(source: str, device: torch.device, dtype: torch.dtype, *, offload: bool) -> Pipeline:
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
    if not offload:
        return pipe.to(device)
    offload_models(pipe, device)
    return pipe


def offload_models(pipe: Pipeline, device: torch.device) -> None:
    """diffusers' model CPU offload onto ``device``: each model moves there as it runs, the
    one before it back to the CPU. ``load_pipeline`` offloads onto CUDA only; on the CPU the
    hooks move nothing, which the tests use to check that offloading keeps the pixels."""
    pipe.enable_model_cpu_offload(device=device)
    setattr(pipe, _OFFLOAD_DEVICE, device)


def execution_device(pipe: Pipeline) -> torch.device:
    """Where the pipeline computes: the device an offloaded one moves its models to as they
    run, else its UNet's."""
    return getattr(pipe, _OFFLOAD_DEVICE, None) or next(pipe.unet.parameters()).device


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
    given = {name: config_tokenizer(folder, name) for name in names}
    if checkpoint.unet_in_channels != read_json(folder / "unet" / "config.json")["in_channels"]:
        # An inpainting file with its family's text-to-image configs: the UNet is built
        # with the file's input width (diffusers applies a config value given by name).
        given["unet"] = UNet2DConditionModel.from_single_file(
            str(checkpoint.path), config=str(folder), subfolder="unet",
            local_files_only=True, dtype=dtype, in_channels=checkpoint.unet_in_channels,
        )
    pipe = cls.from_single_file(
        str(checkpoint.path),
        config=str(folder),
        local_files_only=True,
        dtype=dtype,
        scheduler=_scheduler(checkpoint.scheduler_config()),
        **given,
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


def run_view(shared: Pipeline, scheduler: SchedulerMixin, workflow: str = "txt2img"):
    """A pipeline for the workflow (``WORKFLOWS``: the stock text-to-image, img2img or
    inpainting pipeline) over the shared one's modules, with this run's scheduler: nothing
    shared changes. SDXL's empty-negative-prompt rule is the model's own."""
    components = {**shared.components, "scheduler": scheduler}
    if isinstance(shared, StableDiffusionXLPipeline):
        pipe = WORKFLOWS[workflow][1](
            **components,
            force_zeros_for_empty_prompt=shared.config.force_zeros_for_empty_prompt,
            add_watermarker=False,
        )
    else:
        pipe = WORKFLOWS[workflow][0](**components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    if hasattr(shared, _OFFLOAD_DEVICE):
        setattr(pipe, _OFFLOAD_DEVICE, getattr(shared, _OFFLOAD_DEVICE))
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
