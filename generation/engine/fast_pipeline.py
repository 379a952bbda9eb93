"""Preparing a loaded pipeline for its fast path (``fast_path.py``; docs/engine.md, "The fast
path"), with public torch and diffusers calls only:

1. channels-last: ``module.to(memory_format=torch.channels_last)`` on the UNet and the VAE;
2. fused QKV projections: the models' ``fuse_qkv_projections()``, once; a run switches them
   on or off (``fused_attention``, by attention processor), since a run with LoRAs must not;
3. ``torch.compile``: the UNet and the VAE decoder compiled in place (``nn.Module.compile``),
   so the pipeline's modules, LoRA adapters and memory accounting stay as they are. Compiling
   happens at the first runs of each shape; ``sampling.warm_up`` does them as a worker starts.

Attention is PyTorch's SDPA in every case: diffusers' default ``AttnProcessor2_0``, or its
fused twin ``FusedAttnProcessor2_0`` (``attention_processors`` says which run).
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers import DiffusionPipeline
from diffusers.models.attention_processor import FusedAttnProcessor2_0

from .errors import GenerationError
from .fast_path import CUDA_ONLY_MODES, OFF, FastPath

# The fast path a shared pipeline was prepared with, kept on the pipeline itself.
_PREPARED = "_studio_fast_path"
# A model's own attention processors, kept as its first fusion found them: switching fusion
# on and off is then only a change of processor. Not diffusers' ``unfuse_qkv_projections``:
# ``set_attn_processor`` pops the processors from the dict it is given, so the copy that
# method keeps works once.
_OWN_PROCESSORS = "_studio_own_processors"
_FUSED = "_studio_fused"


def check_fast_path(fast_path: FastPath, device: torch.device, *, offloaded: bool) -> None:
    """GenerationError, saying why, when this device cannot run the fast path."""
    if fast_path.compile in CUDA_ONLY_MODES and device.type != "cuda":
        raise GenerationError(
            f"torch.compile mode {fast_path.compile!r} captures CUDA graphs, which need CUDA; "
            f"this worker runs on {device.type}"
        )
    if fast_path.compile != "off" and offloaded:
        raise GenerationError(
            "torch.compile does not go with model CPU offload (STUDIO_CPU_OFFLOAD)"
        )


def prepare(pipe: DiffusionPipeline, fast_path: FastPath, *, device: torch.device,
            offloaded: bool = False) -> None:
    """Give a freshly loaded pipeline its fast path (the module's docstring lists the
    steps); GenerationError, before anything changes, when this device cannot run it."""
    check_fast_path(fast_path, device, offloaded=offloaded)
    if fast_path.channels_last:
        for model in (pipe.unet, pipe.vae):
            model.to(memory_format=torch.channels_last)
    set_fused(pipe, fast_path.fused_qkv)
    if fast_path.compile != "off":
        pipe.unet.compile(mode=fast_path.compile)
        pipe.vae.decoder.compile(mode=fast_path.compile)
    setattr(pipe, _PREPARED, fast_path)


def prepared_fast_path(pipe: DiffusionPipeline) -> FastPath:
    """The fast path ``prepare`` gave the pipeline; none for one it never saw."""
    return getattr(pipe, _PREPARED, OFF)


def check_prepared(pipe: DiffusionPipeline, fast_path: FastPath) -> None:
    """GenerationError unless the pipeline was prepared for the fast path's compile mode and
    memory format: those are fixed at load (``load_pipeline(..., fast_path=...)``)."""
    prepared = prepared_fast_path(pipe).loaded
    if prepared != fast_path.loaded:
        raise GenerationError(
            f"the recipe ran with compile {fast_path.compile}, channels-last "
            f"{fast_path.channels_last}; this pipeline was loaded with compile "
            f"{prepared.compile}, channels-last {prepared.channels_last}: load it with the "
            "recipe's fast path to reproduce it"
        )


def set_fused(pipe: DiffusionPipeline, fused: bool) -> None:
    """Fused QKV projections on the UNet and the VAE, or their own attention."""
    for model in (pipe.unet, pipe.vae):
        if _is_fused(model) == fused:
            continue
        own = getattr(model, _OWN_PROCESSORS, None)
        if not fused:
            model.set_attn_processor(dict(own))
        elif own is not None:
            model.set_attn_processor(FusedAttnProcessor2_0())
        else:
            setattr(model, _OWN_PROCESSORS, dict(model.attn_processors))
            model.fuse_qkv_projections()
        setattr(model, _FUSED, fused)


def _is_fused(model: torch.nn.Module) -> bool:
    # Kept by set_fused, the only thing that fuses Studio's models: reading the processors
    # instead walks every module, several times a run.
    return getattr(model, _FUSED, False)


@contextmanager
def fused_attention(pipe: DiffusionPipeline, fused: bool) -> Iterator[None]:
    """Fused projections, or not, for one run; the shared models are left as they were. A
    worker runs one job at a time, so switching the shared models affects only this run."""
    before = _is_fused(pipe.unet)
    set_fused(pipe, fused)
    try:
        yield
    finally:
        set_fused(pipe, before)


def attention_processors(pipe: DiffusionPipeline) -> set[str]:
    """The attention processors the UNet and VAE run, by class name."""
    return {type(processor).__name__ for model in (pipe.unet, pipe.vae)
            for processor in model.attn_processors.values()}
