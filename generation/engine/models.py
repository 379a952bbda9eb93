"""Loading Stable-Diffusion-style models in a worker: device choice and a per-process
pipeline cache. What validation reads without the weights is in ``specs.py``."""

import threading

import torch
from diffusers import StableDiffusionPipeline

from .specs import ModelLoadError, ModelSpec, spec_from_configs


class StudioPipeline(StableDiffusionPipeline):
    """The stock pipeline, letting the step callback also read the guided model output and the
    model's input: previews compute the predicted clean latent from them (``previews.py``)."""

    _callback_tensor_inputs = [
        *StableDiffusionPipeline._callback_tensor_inputs,
        "noise_pred",
        "latent_model_input",
    ]


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


_pipelines: dict[tuple[str, str, torch.dtype], StudioPipeline] = {}
_pipelines_lock = threading.Lock()


def load_pipeline(source: str, *, device: torch.device | str, dtype: torch.dtype) -> StudioPipeline:
    """The model's pipeline, loaded once per (source, device, dtype) in this process.

    Safetensors only: a directory with only pickled weights fails instead of running code.
    The pipeline is shared: ``generate`` never changes it, it builds a per-run view with its
    own scheduler.
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


def _load(source: str, device: torch.device, dtype: torch.dtype) -> StudioPipeline:
    try:
        pipe = StudioPipeline.from_pretrained(
            source,
            dtype=dtype,
            use_safetensors=True,
            safety_checker=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"{source}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def pipeline_spec(pipe: StableDiffusionPipeline) -> ModelSpec:
    """The spec of a loaded pipeline, as ``load_spec`` reads it from the files."""
    return spec_from_configs(
        pipe.tokenizer, pipe.scheduler.config, pipe.unet.config, pipe.vae.config
    )
