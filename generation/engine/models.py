"""Loading Stable-Diffusion-style models: device choice, a per-process pipeline cache, the
content hash of the weights, and the limits validation reads from a model's configs."""

import hashlib
import json
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTokenizer

from .recipe import ModelLimits

# A model takes sizes from this many latent pixels up to this many times its native size.
MIN_LATENT_SIZE = 8
MAX_SIZE_FACTOR = 4


class ModelLoadError(RuntimeError):
    """The model's files are missing, unreadable or not a Stable-Diffusion-style pipeline."""


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


def model_dir(source: str) -> Path:
    """The local directory holding the model: the source itself, or its hub cache snapshot."""
    path = Path(source)
    if path.is_dir():
        return path
    try:
        return Path(StableDiffusionPipeline.download(source, use_safetensors=True))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{source}: {exc}") from exc


def weights_hash(source: str) -> str:
    """sha256 over the pipeline components' safetensors files, by relative path and content.

    Only the folders ``model_index.json`` names count, so a hub repo's unused single-file
    checkpoints or a fitted preview projection beside the weights don't change the hash.
    """
    root = model_dir(source)
    digest = hashlib.sha256()
    for path in _weight_files(root):
        stat = path.stat()
        relative = path.relative_to(root).as_posix()
        digest.update(
            f"{relative}\0{_file_sha256(path.resolve(), stat.st_mtime_ns, stat.st_size)}\n".encode()
        )
    return digest.hexdigest()


def _weight_files(root: Path) -> list[Path]:
    index = root / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(f"{root} has no model_index.json: not a diffusers pipeline")
    components = [name for name in json.loads(index.read_text()) if not name.startswith("_")]
    files = sorted(p for name in components for p in (root / name).glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{root} has no .safetensors weights")
    return files


@lru_cache(maxsize=256)
def _file_sha256(path: Path, mtime_ns: int, size: int) -> str:
    # Keyed by mtime and size too, so a file replaced in place is hashed again.
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelSpec:
    """What validation and sampling need to know about a model, without loading its weights."""

    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]
    vae_scale_factor: int
    native_size: int

    @property
    def limits(self) -> ModelLimits:
        return ModelLimits(
            min_size=MIN_LATENT_SIZE * self.vae_scale_factor,
            max_size=MAX_SIZE_FACTOR * self.native_size,
            # The tokenizer's window holds the prompt between a start and an end token.
            max_prompt_tokens=self.tokenizer.model_max_length - 2,
        )

    def prompt_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, truncation=False).input_ids) - 2


@lru_cache(maxsize=32)
def load_spec(source: str) -> ModelSpec:
    """The model's spec from its configs and tokenizer: cheap enough for a web request."""
    try:
        return _spec(
            tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer"),
            # load_config reads the raw file; every scheduler class names the same one.
            scheduler=DDPMScheduler.load_config(source, subfolder="scheduler"),
            unet=UNet2DConditionModel.load_config(source, subfolder="unet"),
            vae=AutoencoderKL.load_config(source, subfolder="vae"),
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{source}: {exc}") from exc


def pipeline_spec(pipe: StableDiffusionPipeline) -> ModelSpec:
    """The spec of a loaded pipeline, as ``load_spec`` reads it from the files."""
    return _spec(pipe.tokenizer, pipe.scheduler.config, pipe.unet.config, pipe.vae.config)


def _spec(tokenizer: CLIPTokenizer, scheduler: Any, unet: Any, vae: Any) -> ModelSpec:
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    sample_size = unet["sample_size"]
    native = sample_size if isinstance(sample_size, int) else min(sample_size)
    return ModelSpec(
        tokenizer=tokenizer,
        scheduler_config=dict(scheduler),
        vae_scale_factor=scale,
        native_size=native * scale,
    )
