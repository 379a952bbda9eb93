"""VAE tiling, diffusers' saver for decoding images too large to decode at once: whether a run
tiles (``off``, ``on``, or ``auto`` from the memory a decode needs and the memory free now),
and switching it on for one run on a shared pipeline.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline

from .models import Pipeline, execution_device

VAE_TILING = ("off", "on", "auto")
# Peak bytes of one VAE decode, beyond its weights, per output pixel, per channel of the
# decoder's last block and per byte of its dtype. SD's VAE (128 channels; SD 1.x, 2.x and SDXL
# share its decoder) measured 5187, 4182 and 3977 bytes a pixel in float32 at 256, 384 and
# 512 pixels a side (peak RSS on the CPU), the fixed part shrinking with size: 7.8 per
# channel and dtype byte, rounded up.
DECODE_BYTES = 8


def tiling_for(pipe: Pipeline, mode: str, *, batch_size: int, width: int, height: int) -> bool:
    """Whether a run's VAE decodes in tiles: ``on`` and ``off`` as they say; ``auto`` when
    decoding the batch at once would not fit the memory available on the pipeline's device
    now (``decode_bytes`` against ``available_bytes``). Tiling changes the pixels, so a
    recipe records the answer."""
    if mode not in VAE_TILING:
        raise ValueError(f"VAE tiling must be one of {', '.join(VAE_TILING)}, not {mode!r}")
    if mode != "auto":
        return mode == "on"
    needed = decode_bytes(pipe, batch_size=batch_size, width=width, height=height)
    return needed > available_bytes(execution_device(pipe))


def decode_bytes(pipe: Pipeline, *, batch_size: int, width: int, height: int) -> int:
    """The estimated peak of decoding a batch in one piece (``DECODE_BYTES``). SDXL's VAE
    decodes in float32 when the model runs in float16 (``previews.vae_decode``)."""
    vae = pipe.vae
    upcast = (isinstance(pipe, StableDiffusionXLPipeline) and vae.dtype == torch.float16
              and vae.config.force_upcast)
    item = 4 if upcast else vae.dtype.itemsize
    channels = vae.config.block_out_channels[0]
    return DECODE_BYTES * channels * item * batch_size * width * height


def available_bytes(device: torch.device) -> int:
    """Memory a decode may take now: on CUDA, the free memory and what torch's allocator
    holds unused; elsewhere, the RAM Linux counts available (MemAvailable), within the room
    a cgroup v2 limit (a container's) leaves beside all but reclaimable file cache."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
        meminfo = dict(line.split(":", 1) for line in lines)
        available = int(meminfo["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):  # not Linux
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    cgroup = Path("/sys/fs/cgroup")
    try:
        stat = dict(line.split() for line in (cgroup / "memory.stat").read_text().splitlines())
        room = (int((cgroup / "memory.max").read_text()) + int(stat["inactive_file"])
                - int((cgroup / "memory.current").read_text()))
    except (OSError, KeyError, ValueError):  # no cgroup v2, or no limit ("max")
        return available
    return min(available, room)


@contextmanager
def decode_in_tiles(pipe: Pipeline, tiled: bool) -> Iterator[None]:
    """The VAE decodes in overlapping tiles during a run (diffusers' ``enable_tiling``, which
    tiles only latents larger than a tile, ``tile_latent_min_size`` a side). The VAE is
    shared: tiling is switched off after the run; a worker runs one job at a time."""
    if tiled:
        pipe.vae.enable_tiling()
    try:
        yield
    finally:
        if tiled:
            pipe.vae.disable_tiling()
