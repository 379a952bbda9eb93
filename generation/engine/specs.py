"""What validation needs to know about a model, read from its files without loading its
weights or importing torch: the limits from its configs, its tokenizer, the hash of its weights.

The web tier validates every request with these, so nothing here imports torch or diffusers
(docs/architecture.md §1); ``models.py`` loads the weights in the worker.
"""

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download, snapshot_download
from transformers import CLIPTokenizer

from .recipe import ModelLimits

# A model takes sizes from this many latent pixels up to this many times its native size.
MIN_LATENT_SIZE = 8
MAX_SIZE_FACTOR = 4
# Hub errors that mean "not there" or "not a repo id" are OSError or ValueError subclasses.
_READ_ERRORS = (OSError, ValueError)


class ModelLoadError(RuntimeError):
    """The model's files are missing, unreadable or not a Stable-Diffusion-style pipeline."""


def model_dir(source: str) -> Path:
    """The local directory holding the model: the source itself, or its hub cache snapshot
    with the files a safetensors ``from_pretrained`` reads (no other precision variants)."""
    path = Path(source)
    if path.is_dir():
        return path
    try:
        return Path(snapshot_download(
            source,
            allow_patterns=["model_index.json", "*/*.json", "*/*.txt", "*/*.safetensors"],
            ignore_patterns=["*/*.*.safetensors"],  # fp16 and other variants
        ))
    except _READ_ERRORS as exc:
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
        return spec_from_configs(
            tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer"),
            scheduler=_read_config(source, "scheduler/scheduler_config.json"),
            unet=_read_config(source, "unet/config.json"),
            vae=_read_config(source, "vae/config.json"),
        )
    except _READ_ERRORS as exc:
        raise ModelLoadError(f"{source}: {exc}") from exc


def _read_config(source: str, name: str) -> dict[str, Any]:
    """One JSON config of a model folder or hub repo, as the file has it."""
    path = Path(source) / name
    if not Path(source).is_dir():
        path = Path(hf_hub_download(source, name))
    config = json.loads(path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{name} is not a JSON object")
    return config


def spec_from_configs(tokenizer: CLIPTokenizer, scheduler: Any, unet: Any, vae: Any) -> ModelSpec:
    try:
        scale = 2 ** (len(vae["block_out_channels"]) - 1)
        sample_size = unet["sample_size"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"the unet and vae configs lack {exc}") from exc
    native = sample_size if isinstance(sample_size, int) else min(sample_size)
    return ModelSpec(
        tokenizer=tokenizer,
        scheduler_config=dict(scheduler),
        vae_scale_factor=scale,
        native_size=native * scale,
    )
