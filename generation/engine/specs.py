"""What validation needs to know about a model, read from its files without loading its
weights or importing torch: its family, the limits from its configs, its tokenizer, the hash
of its weights.

A model's source is a diffusers folder, a hub id, or a single ``.safetensors`` checkpoint in
the original Stable Diffusion layout (``checkpoints.py``: a single file's configs are its
family's shipped folder, or the one its ``<stem>.studio.json`` names). The web tier validates
every request with these, so nothing here imports torch or diffusers (docs/architecture.md
§1); ``models.py`` loads the weights in the worker.
"""

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download, snapshot_download
from transformers import CLIPTokenizer

from .checkpoints import SIDECAR_SUFFIX, checked_path, inspect_checkpoint, is_single_file
from .families import CLIP_VOCABULARY, ModelLoadError, family_of
from .recipe import ModelLimits

# A model takes sizes from this many latent pixels up to this many times its native size.
MIN_LATENT_SIZE = 8
MAX_SIZE_FACTOR = 4
# The input channels of an inpainting UNet: 4 latent, 1 mask, 4 of the masked image's latents.
INPAINTING_CHANNELS = 9
# Hub errors that mean "not there" or "not a repo id" are OSError or ValueError subclasses.
_READ_ERRORS = (OSError, ValueError)
_VOCABULARY_FILES = ("vocab.json", "tokenizer.json")


def model_dir(source: str) -> Path:
    """The local directory holding a folder or hub model: the source itself, or its hub
    cache snapshot with the files a safetensors ``from_pretrained`` reads (no other
    precision variants)."""
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
    """The sha256 that names a model's weights, cached by each file's path, size and mtime.

    A single file: the sha256 of the whole file, as AUTOMATIC1111 reports it. A folder or hub
    model: the sha256 over its components' safetensors files, by relative path and content;
    only the folders ``model_index.json`` names count, so a hub repo's unused single-file
    checkpoints or a fitted preview projection beside the weights don't change it.
    """
    if is_single_file(source):
        path = checked_path(source)
        stat = path.stat()
        return _file_sha256(path.resolve(), stat.st_mtime_ns, stat.st_size)
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
    family: str  # a name in families.FAMILIES: sd1, sd2 or sdxl
    context_width: int  # the width of the text the UNet attends to (a LoRA's must match)
    # A 9-channel inpainting UNet (latents, mask, masked image): it only inpaints.
    inpainting: bool = False

    @property
    def limits(self) -> ModelLimits:
        return ModelLimits(
            min_size=MIN_LATENT_SIZE * self.vae_scale_factor,
            max_size=MAX_SIZE_FACTOR * self.native_size,
            # The tokenizer's window holds the prompt between a start and an end token. SDXL's
            # two tokenizers share the vocabulary and the window, so one counts for both.
            max_prompt_tokens=self.tokenizer.model_max_length - 2,
        )

    def prompt_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, truncation=False).input_ids) - 2


def load_spec(source: str) -> ModelSpec:
    """The model's spec from its configs and tokenizer: cheap enough for a web request.
    Kept per source; a single file's again when it, or its sidecar, changes."""
    return _spec(source, _file_stamp(source))


def _file_stamp(source: str) -> tuple | None:
    if not is_single_file(source):
        return None
    path = Path(source)
    sidecar = path.with_name(path.stem + SIDECAR_SUFFIX)
    return tuple(
        (stat.st_mtime_ns, stat.st_size) if (stat := _stat(p)) else None for p in (path, sidecar)
    )


def _stat(path: Path):
    try:
        return path.stat()
    except OSError:
        return None


@lru_cache(maxsize=32)
def _spec(source: str, stamp: tuple | None) -> ModelSpec:
    if is_single_file(source):
        return checkpoint_spec(source)
    try:
        index = _read_config(source, "model_index.json")
        unet = _read_config(source, "unet/config.json")
        return spec_from_configs(
            family=family_of(index.get("_class_name"), unet).name,
            tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer"),
            scheduler=_read_config(source, "scheduler/scheduler_config.json"),
            unet=unet,
            vae=_read_config(source, "vae/config.json"),
        )
    except _READ_ERRORS as exc:
        raise ModelLoadError(f"{source}: {exc}") from exc


def checkpoint_spec(source: str) -> ModelSpec:
    """A single file's spec: its family from the header, the rest from its config folder."""
    checkpoint = inspect_checkpoint(source)
    folder = checkpoint.config_dir
    try:
        return spec_from_configs(
            family=checkpoint.family.name,
            tokenizer=config_tokenizer(folder, "tokenizer"),
            scheduler=checkpoint.scheduler_config(),
            unet={**_read_config(str(folder), "unet/config.json"),
                  "in_channels": checkpoint.unet_in_channels},
            vae=_read_config(str(folder), "vae/config.json"),
        )
    except _READ_ERRORS as exc:
        raise ModelLoadError(f"{checkpoint.path.name}: configs in {folder}: {exc}") from exc


def config_tokenizer(config_dir: Path, subfolder: str) -> CLIPTokenizer:
    """A config folder's tokenizer. The shipped folders' tokenizers hold only their settings
    and read the CLIP vocabulary they share (families.CLIP_VOCABULARY); a folder with its
    own vocabulary reads that."""
    folder = config_dir / subfolder
    if any((folder / name).is_file() for name in _VOCABULARY_FILES):
        return CLIPTokenizer.from_pretrained(folder)
    return CLIPTokenizer.from_pretrained(
        folder,
        vocab_file=str(CLIP_VOCABULARY / "vocab.json"),
        merges_file=str(CLIP_VOCABULARY / "merges.txt"),
    )


def _read_config(source: str, name: str) -> dict[str, Any]:
    """One JSON config of a model folder or hub repo, as the file has it."""
    path = Path(source) / name
    if not Path(source).is_dir():
        path = Path(hf_hub_download(source, name))
    config = json.loads(path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{name} is not a JSON object")
    return config


def spec_from_configs(
    *, family: str, tokenizer: CLIPTokenizer, scheduler: Any, unet: Any, vae: Any
) -> ModelSpec:
    try:
        scale = 2 ** (len(vae["block_out_channels"]) - 1)
        sample_size = unet["sample_size"]
        context_width = unet["cross_attention_dim"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"the unet and vae configs lack {exc}") from exc
    native = sample_size if isinstance(sample_size, int) else min(sample_size)
    return ModelSpec(
        tokenizer=tokenizer,
        scheduler_config=dict(scheduler),
        vae_scale_factor=scale,
        native_size=native * scale,
        family=family,
        context_width=context_width,
        inpainting=unet.get("in_channels") == INPAINTING_CHANNELS,
    )
