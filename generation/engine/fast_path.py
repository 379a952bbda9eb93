"""The GPU fast path a run used, as its recipe records it (docs/engine.md, "The fast path").

Each part may change the pixels (measured: even on the CPU in float32 each moves the last
bits of the output), so a recipe records which ran, and a reproduction runs the same:

- ``compile``: the ``torch.compile`` mode of the UNet and the VAE decoder, or ``off``.
  ``reduce-overhead`` captures CUDA graphs (as ``max-autotune`` does on CUDA); it is refused
  on the CPU, where it would be ``default`` under another name.
- ``channels_last``: the UNet's and VAE's weights in channels-last memory format.
- ``fused_qkv``: diffusers' fused attention projections (one matmul for q, k and v).

Light: no torch. Applying it to a pipeline is ``fast_pipeline.py``.
"""

from dataclasses import dataclass
from typing import Any

COMPILE_MODES = ("off", "default", "max-autotune", "max-autotune-no-cudagraphs",
                 "reduce-overhead")
# The modes whose CUDA graphs need a CUDA device; on the CPU they are refused.
CUDA_ONLY_MODES = ("reduce-overhead",)


@dataclass(frozen=True)
class FastPath:
    compile: str = "off"
    channels_last: bool = False
    fused_qkv: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"compile": self.compile, "channels_last": self.channels_last,
                "fused_qkv": self.fused_qkv}

    @property
    def loaded(self) -> "FastPath":
        """The parts a loaded pipeline is prepared with, and cached by: compile and memory
        format. Fused projections are switched per run (``fast_pipeline.fused_attention``)."""
        return FastPath(compile=self.compile, channels_last=self.channels_last)


OFF = FastPath()


def fast_path_from_json(data: Any) -> FastPath | None:
    """A recipe's ``fast_path``: null, or an object of exactly the three keys (TypeError
    otherwise, which ``Recipe.from_json`` reports)."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise TypeError("fast_path must be an object or null")
    return FastPath(**data)


def fast_path_errors(fast_path: FastPath | None, loras: tuple) -> dict[str, str]:
    """Errors of a recipe's ``fast_path``, one per key."""
    if fast_path is None:
        return {}
    errors = {}
    if fast_path.compile not in COMPILE_MODES:
        errors["fast_path.compile"] = f"must be one of {', '.join(COMPILE_MODES)}"
    for key in ("channels_last", "fused_qkv"):
        if not isinstance(getattr(fast_path, key), bool):
            errors[f"fast_path.{key}"] = "must be true or false"
    if fast_path.fused_qkv is True and loras:
        # diffusers' fused processor reads only the fused weight, so LoRA adapters on the
        # attention projections would be skipped: a run with LoRAs never fuses.
        errors["fast_path.fused_qkv"] = "must be false with LoRAs"
    return errors
