"""LoRA files: what each one is for, and what A1111 calls its hash, without loading a tensor.
Light (json and hashlib): the web tier checks LoRAs with it; ``lora_weights.py`` applies them
in the worker.

A LoRA is a ``.safetensors`` file named by its stem, in the diffusers/PEFT layout
(``unet.….lora_A.weight``), kohya's (``lora_unet_…​.lora_down.weight``, as A1111 and Civitai
keep them) or older diffusers' (``….to_k_lora.down.weight``). Its cross-attention matrices tell
the width of the text it was trained against, which must be the model's: 768 for SD 1.x,
1024 for SD 2.x, 2048 for SDXL. A LoRA for another family is refused by name before it loads.
"""

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .checkpoints import Header, read_header
from .families import ModelLoadError

# Characters that would break a LoRA's tag in a prompt (<lora:name:weight>) or A1111's
# "Lora hashes" list: a file whose stem holds one is not offered (generation.registry).
UNSAFE_NAME_CHARACTERS = '<>:,"'
# The down (A) matrix of a cross-attention key projection, in each layout: [rank, width].
_KEY_PROJECTIONS = ("attn2_to_k.lora_down.weight", "attn2.to_k.lora_A.weight",
                    "attn2.to_k.lora.down.weight", "attn2.processor.to_k_lora.down.weight")
_LAYOUTS = {"lora_unet_": "kohya", "lora_te": "kohya", ".lora_A.": "peft",
            ".lora.down.": "diffusers", "_lora.down.": "diffusers"}


@dataclass(frozen=True)
class LoraFile:
    name: str
    path: Path
    layout: str  # kohya, peft or diffusers
    context_width: int | None  # None: it adapts no cross-attention (text encoders only)
    metadata: dict[str, str]


def inspect_lora(name: str, path: Path) -> LoraFile:
    """What the file is, from its header; a file that is no LoRA is a ModelLoadError."""
    header = read_header(path)
    layout = _layout(header)
    if layout is None:
        found = sorted({key.split(".")[0] for key in header.tensors})[:4]
        raise ModelLoadError(
            f"LoRA {name!r}: no LoRA weights in {path.name} ({len(header.tensors)} tensors, "
            f"named {', '.join(found) or 'nothing'})"
        )
    return LoraFile(name=name, path=path, layout=layout, context_width=_context_width(header),
                    metadata=header.metadata)


def mismatch(lora: LoraFile, model_width: int, model_title: str) -> str | None:
    """Why the LoRA cannot apply to a model whose UNet attends to text ``model_width`` wide,
    or None when it can."""
    if lora.context_width is None or lora.context_width == model_width:
        return None
    return (
        f"LoRA {lora.name!r} was trained for a model reading {_family_of_width(lora.context_width)}"
        f" text ({lora.context_width} wide); {model_title} reads {model_width}"
    )


def _family_of_width(width: int) -> str:
    return {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}.get(width, "other")


def _layout(header: Header) -> str | None:
    for name in header.tensors:
        for marker, layout in _LAYOUTS.items():
            if marker in name:
                return layout
    return None


def _context_width(header: Header) -> int | None:
    for name, tensor in header.tensors.items():
        if name.endswith(_KEY_PROJECTIONS) and len(tensor.shape) == 2:
            return tensor.shape[1]
    return None


def a1111_hash(path: Path) -> str:
    """What AUTOMATIC1111 writes for the file under "Lora hashes": a hash the file's own
    metadata records (``sshs_model_hash``, kohya's), else the sha256 of its tensor bytes after
    the header (A1111's "addnet" hash, so editing the metadata does not change it); 12 hex."""
    stat = path.stat()
    return _a1111_hash(path.resolve(), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=256)
def _a1111_hash(path: Path, mtime_ns: int, size: int) -> str:
    # Keyed by mtime and size too, so a file replaced in place is hashed again.
    header = read_header(path)
    recorded = header.metadata.get("sshs_model_hash")
    if isinstance(recorded, str) and recorded:
        return recorded[:12]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        f.seek(header.data_start)
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:12]
