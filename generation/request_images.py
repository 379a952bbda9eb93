"""The request's image fields (generation/job_request.py): an input image and its mask, typed
from what a door sends (base64 text, a data: URL, bytes or an uploaded file) into the
canonical PNG the engine makes of it (engine.canonical_image, canonical_mask).

Every image is hostile: its size in bytes is capped before anything decodes it
(STUDIO_INPUT_MAX_BYTES: the base64 text's length, an upload's size), and its pixels, read
from its header, before its pixels are (STUDIO_INPUT_MAX_PIXELS: a decompression bomb).
"""

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from .engine.inputs import (
    ImageRef,
    InputError,
    canonical_image,
    canonical_mask,
    decode_data_url,
    mask_size_error,
)


@dataclass(frozen=True)
class ImageData:
    """An input image as the request holds it once parsed: the canonical PNG the engine made
    of what was sent (engine.canonical_image), the sha256 that names it, and its size."""

    png: bytes = field(repr=False)
    sha256: str
    width: int
    height: int

    type_error = "Send an image: base64 text or a data: URL."


@dataclass(frozen=True)
class MaskData(ImageData):
    """A mask (engine.canonical_mask): greyscale, white where the image is repainted."""

    type_error = "Send a mask image: base64 text or a data: URL."


def typed(kind: type[ImageData], raw: Any) -> ImageData:
    """An input image or mask as the engine makes it canonical, from base64 text, a data:
    URL, bytes or an uploaded file, each capped at STUDIO_INPUT_MAX_BYTES before it is
    decoded, and at STUDIO_INPUT_MAX_PIXELS from its header before its pixels are."""
    what = "mask" if kind is MaskData else "image"
    limits = {"max_bytes": settings.STUDIO_INPUT_MAX_BYTES,
              "max_pixels": settings.STUDIO_INPUT_MAX_PIXELS}
    try:
        data = _image_bytes(kind, raw, limits["max_bytes"])
        if kind is MaskData:
            png, ref, (width, height) = canonical_mask(data, **limits)
        else:
            png, ref = canonical_image(data, **limits)
            width, height = ref.width, ref.height
    except InputError as exc:
        raise ValueError(f"The {what} {exc}.") from None
    return kind(png=png, sha256=ref.sha256, width=width, height=height)


def _image_bytes(kind: type[ImageData], raw: Any, max_bytes: int) -> bytes:
    if isinstance(raw, str):
        return decode_data_url(raw, max_bytes=max_bytes)
    if isinstance(raw, bytes | bytearray):
        return bytes(raw)
    size = getattr(raw, "size", None)  # an uploaded file: its size is known before reading
    if isinstance(size, int) and callable(getattr(raw, "read", None)):
        if size > max_bytes:
            raise InputError(f"is {size:,} bytes; the most is {max_bytes:,}")
        return raw.read()
    raise ValueError(kind.type_error)


def mask_fits(values: dict) -> dict[str, str]:
    """An error for a mask that is not its image's size (engine.mask_size_error says the
    rule): checked here, where both sizes are known, as a recipe names a mask by hash only."""
    image, mask = values.get("init_image"), values.get("mask")
    if image is None or mask is None:
        return {}
    ref = ImageRef(sha256=image.sha256, width=image.width, height=image.height)
    problem = mask_size_error(ref, (mask.width, mask.height))
    return {"mask": f"The mask {problem}."} if problem else {}
