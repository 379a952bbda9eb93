"""Applying a recipe's LoRAs to a loaded pipeline, for one run at a time.

Each file is loaded once per pipeline, as a PEFT adapter named for its hash, and stays loaded
for later runs; a run activates its own adapters at its weights (``set_adapters``), one
weight for the UNet and the text encoders alike, as A1111's ``<lora:name:weight>`` does, and
a run without LoRAs switches them all off. Nothing is fused into the weights: unfusing is not
exact, and the next run must get the base model's pixels bit for bit. A worker runs one job at
a time, so activating adapters on the shared modules affects only the run that asked.
"""

from collections.abc import Sequence
from pathlib import Path

from diffusers import DiffusionPipeline

from .families import ModelLoadError
from .loras import inspect_lora, mismatch

# Adapters a pipeline keeps loaded; the least recently used goes first beyond this.
MAX_LOADED = 16


def adapter_name(file_hash: str) -> str:
    # PEFT keeps adapters in module dicts: the name must hold no dot.
    return f"lora_{file_hash[:16]}"


def apply_loras(pipe: DiffusionPipeline, loras: Sequence[tuple[str, Path, str, float]]) -> None:
    """Make ``loras`` ((name, path, sha256, weight) each) the pipeline's active adapters, or
    switch adapters off when there are none. A file for another family is refused by name."""
    loaded = _loaded(pipe)
    if not loras:
        if loaded:
            pipe.disable_lora()
        return
    names = []
    for name, path, file_hash, _weight in loras:
        adapter = adapter_name(file_hash)
        if adapter not in loaded:
            _load(pipe, name, path, adapter)
            loaded.append(adapter)
        loaded.remove(adapter)
        loaded.append(adapter)  # most recently used last
        names.append(adapter)
    _forget_beyond(pipe, loaded, keep=set(names))
    pipe.enable_lora()
    pipe.set_adapters(names, adapter_weights=[weight for *_, weight in loras])


def _loaded(pipe: DiffusionPipeline) -> list[str]:
    """The pipeline's adapters, least recently used first; kept on the pipeline itself."""
    if not hasattr(pipe, "_studio_adapters"):
        pipe._studio_adapters = []
    return pipe._studio_adapters


def _load(pipe: DiffusionPipeline, name: str, path: Path, adapter: str) -> None:
    lora = inspect_lora(name, path)
    width = pipe.unet.config.cross_attention_dim
    if problem := mismatch(lora, width, f"this model ({type(pipe).__name__})"):
        raise ModelLoadError(problem)
    try:
        pipe.load_lora_weights(str(path), adapter_name=adapter)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"LoRA {name!r} cannot be applied to this model: {exc}") from exc


def _forget_beyond(pipe: DiffusionPipeline, loaded: list[str], keep: set[str]) -> None:
    while len(loaded) > MAX_LOADED:
        oldest = next(adapter for adapter in loaded if adapter not in keep)
        pipe.delete_adapters([oldest])
        loaded.remove(oldest)
