"""Single-file checkpoints: one ``.safetensors`` file in the original Stable Diffusion layout
(as AUTOMATIC1111, ComfyUI and Civitai keep them), read without loading its weights.

1. The file must be safetensors: a ``.ckpt`` (or ``.pt``, ``.pth``, ``.bin``) is a pickle,
   which can run code as it loads, and is refused by its name, unopened. The header is read
   with ``struct`` and ``json`` and must fit the file: a truncated download is refused here,
   not halfway through a load.
2. The family comes from the header's names and shapes (``families.Family.text_encoders``):
   the text encoders beside the UNet. A file with no UNet in this layout (a LoRA, a diffusers
   component), an instruct UNet, an SDXL refiner or an unknown text encoder is refused, with
   what was found. An inpainting UNet (9 input channels: latents, mask, masked image) loads
   with its family's configs, its UNet's input width set from the header.
3. The prediction type: SD 2.x files do not say whether they predict noise or v, so Studio
   takes ComfyUI's rule: v-prediction when the standard deviation of
   ``output_blocks.11.1.transformer_blocks.0.norm1.bias`` exceeds 0.09 (320 numbers read from
   the file). SDXL files that predict v carry a ``v_pred`` tensor.
4. The configs: the family's shipped folder for that prediction type (``families.py``).

**The sidecar** ``<stem>.studio.json`` beside ``<stem>.safetensors`` overrides steps 3 and 4:

    {"prediction_type": "v_prediction"}           epsilon or v_prediction, instead of the guess
    {"config": "my-model-config"}                 a weights-free diffusers config folder,
                                                  relative to the file's folder, instead of
                                                  the shipped one (a model not of full size,
                                                  as the tests' tiny ones are)

The configs' UNet must read the checkpoint's text-encoder width, or the file is refused
before any load. Light: the web tier reads a single file's spec with this; ``models.py``
loads the weights.
"""

import json
import statistics
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .families import (
    FAMILIES,
    PREDICTION_TYPES,
    SD2,
    SDXL,
    Family,
    ModelLoadError,
    folder_family,
    read_json,
)

SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SIDECAR_SUFFIX = ".studio.json"
SIDECAR_KEYS = ("config", "prediction_type")
UNET = "model.diffusion_model."
# A full SDXL checkpoint's header is about 300 kB; a length beyond this is not a header.
MAX_HEADER_BYTES = 100 << 20
V_PREDICTION_PROBE = UNET + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
V_PREDICTION_STD = 0.09
# struct formats of the dtypes the probe tensor comes in; BF16 is widened by hand.
_FORMATS = {"F64": "d", "F32": "f", "F16": "e"}


@dataclass(frozen=True)
class Tensor:
    dtype: str
    shape: tuple[int, ...]
    offsets: tuple[int, int]  # from the start of the data, after the header


@dataclass(frozen=True)
class Header:
    tensors: dict[str, Tensor]
    metadata: dict[str, str]
    data_start: int  # the file offset tensors' offsets count from


@dataclass(frozen=True)
class Checkpoint:
    """A single-file checkpoint Studio can load, and the configs that describe it."""

    path: Path
    family: Family
    config_dir: Path
    # Set on the configs' scheduler; None keeps theirs (a sidecar's folder, no override).
    prediction_type: str | None
    evidence: str  # what the header showed, for the models list and logs
    # The UNet's input channels, from the header: 4, or 9 for an inpainting model, which the
    # shipped configs (text to image) do not say.
    unet_in_channels: int = 4

    def scheduler_config(self) -> dict[str, Any]:
        config = read_json(self.config_dir / "scheduler" / "scheduler_config.json")
        if self.prediction_type is not None:
            config["prediction_type"] = self.prediction_type
        return config


def is_single_file(source: str) -> bool:
    """Whether a model source names a file (loaded or refused as one), not a folder or a hub
    id."""
    path = Path(source)
    return path.is_file() or path.suffix.lower() in (SUFFIX, *PICKLE_SUFFIXES)


def checked_path(source: str) -> Path:
    """The checkpoint's path, once its name says safetensors and the file is there."""
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"{path.name} is a pickle checkpoint ({suffix}): Studio never loads pickles, which "
            "can run code as they load; use a .safetensors file"
        )
    if suffix != SUFFIX:
        raise ModelLoadError(f"{path.name}: a model file must be a {SUFFIX} checkpoint")
    if not path.is_file():
        raise ModelLoadError(f"{source}: no such file")
    return path


def read_header(path: Path) -> Header:
    """The safetensors header: each tensor's dtype, shape and place, and the metadata.
    Refuses a file that is not safetensors or is shorter than its header says."""
    size = path.stat().st_size
    with path.open("rb") as file:
        raw = file.read(8)
        if len(raw) < 8:
            raise ModelLoadError(f"{path.name}: {size} bytes, not a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise ModelLoadError(
                f"{path.name}: a header of {length} bytes does not fit a {size}-byte file: "
                "not a safetensors file, or cut short"
            )
        try:
            header = json.loads(file.read(length))
            metadata = header.pop("__metadata__", None) or {}
            tensors = {
                name: Tensor(entry["dtype"], tuple(entry["shape"]), tuple(entry["data_offsets"]))
                for name, entry in header.items()
            }
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ModelLoadError(f"{path.name}: unreadable safetensors header ({exc})") from exc
    needed = 8 + length + max((t.offsets[1] for t in tensors.values()), default=0)
    if needed > size:
        raise ModelLoadError(
            f"{path.name} is truncated: its tensors need {needed} bytes, the file has {size}"
        )
    return Header(tensors=tensors, metadata=metadata, data_start=8 + length)


def detect_family(header: Header) -> tuple[Family, str]:
    """The family, from which text encoders sit beside the UNet, and the evidence."""
    tensors = header.tensors
    unet = [name for name in tensors if name.startswith(UNET)]
    if not unet:
        raise ModelLoadError(_not_a_model(tensors))
    channels = unet_in_channels(header)
    if channels not in UNET_IN_CHANNELS:
        raise ModelLoadError(
            f"its UNet takes {channels} input channels (4 is text-to-image, 9 inpainting, "
            "8 instruct-pix2pix): only text-to-image and inpainting models run here"
        )
    width = context_width(header)
    for family in FAMILIES.values():
        if all(key in tensors for key in family.text_encoders):
            shapes = ", ".join(str(list(tensors[key].shape)) for key in family.text_encoders)
            return family, f"{family.title}: text encoder embeddings {shapes}, context {width}"
    raise ModelLoadError(_unknown_text_encoder(tensors, len(unet)))


# Text to image, and inpainting (latents, mask, the masked image's latents).
UNET_IN_CHANNELS = (4, 9)


def unet_in_channels(header: Header) -> int:
    """The UNet's input channels, from its first convolution's shape (4 when unreadable)."""
    first = header.tensors.get(UNET + "input_blocks.0.0.weight")
    return first.shape[1] if first is not None and len(first.shape) == 4 else 4


def _not_a_model(tensors: dict[str, Tensor]) -> str:
    prefixes = sorted({name.split(".")[0] for name in tensors})
    found = f"{len(tensors)} tensors, named {', '.join(prefixes[:6]) or 'nothing'}"
    if any("lora" in name.lower() for name in tensors):
        return f"no UNet in the original layout ({UNET}*), {found}: a LoRA, not a model"
    return f"no UNet in the original layout ({UNET}*), {found}"


def _unknown_text_encoder(tensors: dict[str, Tensor], unet_count: int) -> str:
    if "conditioner.embedders.0.model.token_embedding.weight" in tensors:
        return "an SDXL refiner (its only text encoder is OpenCLIP-bigG): not supported"
    if "cond_stage_model.transformer.embeddings.token_embedding.weight" in tensors:
        return (
            "an SD 1.x checkpoint in an older layout (cond_stage_model.transformer.embeddings, "
            "without text_model.): re-save it in the current layout"
        )
    others = sorted({".".join(n.split(".")[:2]) for n in tensors if not n.startswith(UNET)})
    return (
        f"{unet_count} UNet tensors, but none of the text encoders SD 1.x, 2.x or SDXL use "
        f"(other tensors: {', '.join(others[:6]) or 'none'})"
    )


def context_width(header: Header) -> int | None:
    """The width of the text the UNet attends to: any cross-attention key is [inner, width]."""
    for name, tensor in header.tensors.items():
        if name.startswith(UNET) and name.endswith(".attn2.to_k.weight"):
            return tensor.shape[1]
    return None


def detected_prediction_type(path: Path, header: Header, family: Family) -> str:
    """What the model predicts, as far as the file tells (module docstring, step 3)."""
    if family is SDXL:
        return "v_prediction" if "v_pred" in header.tensors else "epsilon"
    if family is not SD2 or V_PREDICTION_PROBE not in header.tensors:
        return "epsilon"
    values = tensor_values(path, header, V_PREDICTION_PROBE)
    return "v_prediction" if statistics.pstdev(values) > V_PREDICTION_STD else "epsilon"


def tensor_values(path: Path, header: Header, name: str) -> list[float]:
    """One small floating-point tensor's values, read from the file without torch."""
    tensor = header.tensors[name]
    begin, end = tensor.offsets
    with path.open("rb") as file:
        file.seek(header.data_start + begin)
        raw = file.read(end - begin)
    if tensor.dtype == "BF16":  # the top half of a float32
        halves = struct.unpack(f"<{len(raw) // 2}H", raw)
        return [struct.unpack("<f", struct.pack("<I", half << 16))[0] for half in halves]
    if tensor.dtype not in _FORMATS:
        raise ModelLoadError(f"{path.name}: {name} is {tensor.dtype}, not a float tensor")
    code = _FORMATS[tensor.dtype]
    return list(struct.unpack(f"<{len(raw) // struct.calcsize(code)}{code}", raw))


def read_sidecar(path: Path) -> dict[str, str]:
    """The checkpoint's ``<stem>.studio.json``, checked; empty when there is none."""
    sidecar = path.with_name(path.stem + SIDECAR_SUFFIX)
    if not sidecar.is_file():
        return {}
    settings = read_json(sidecar)
    unknown = sorted(set(settings) - set(SIDECAR_KEYS))
    if unknown:
        raise ModelLoadError(f"{sidecar.name}: unknown settings {unknown}; known: {SIDECAR_KEYS}")
    prediction = settings.get("prediction_type")
    if prediction is not None and prediction not in PREDICTION_TYPES:
        raise ModelLoadError(
            f"{sidecar.name}: prediction_type must be one of {PREDICTION_TYPES}, not {prediction!r}"
        )
    if not isinstance(settings.get("config", ""), str):
        raise ModelLoadError(f"{sidecar.name}: config must be a folder's path")
    return settings


def inspect_checkpoint(source: str) -> Checkpoint:
    """The checkpoint at ``source``, checked, classified, with its configs (the module
    docstring's steps); a ModelLoadError says why Studio will not load it."""
    path = checked_path(source)
    header = read_header(path)
    try:
        family, evidence = detect_family(header)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path.name}: {exc}") from exc
    settings = read_sidecar(path)
    prediction = settings.get("prediction_type")
    if "config" in settings:
        config_dir = path.parent / settings["config"]
    else:
        prediction = prediction or detected_prediction_type(path, header, family)
        config_dir = family.config_folder(prediction)
    checkpoint = Checkpoint(path, family, config_dir, prediction, evidence,
                            unet_in_channels(header))
    _check_configs(checkpoint, context_width(header))
    return checkpoint


def _check_configs(checkpoint: Checkpoint, width: int | None) -> None:
    """The configs must describe this checkpoint's family and widths, or the load would
    fail halfway with a shape error."""
    name, folder = checkpoint.path.name, checkpoint.config_dir
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(f"{name}: its config folder {folder} has no model_index.json")
    configured = folder_family(folder)
    if configured is not checkpoint.family:
        raise ModelLoadError(
            f"{name} is {checkpoint.family.title}, but its config folder {folder} is "
            f"{configured.title}"
        )
    expected = read_json(folder / "unet" / "config.json").get("cross_attention_dim")
    if width is not None and width != expected:
        raise ModelLoadError(
            f"{name}: its UNet reads text {width} wide, but the configs in {folder} expect "
            f"{expected} ({checkpoint.family.title} at full size is "
            f"{checkpoint.family.context_width}); give its own config folder in "
            f"{checkpoint.path.stem}{SIDECAR_SUFFIX}"
        )
