"""The request's image fields (generation/job_request.py): an input image and its mask, typed
from what a door sends (base64 text, a data: URL, bytes or an uploaded file).

Every image is hostile: its size in bytes is capped before anything decodes it
(STUDIO_INPUT_MAX_BYTES: the base64 text's length, an upload's size), and its pixels, read
from its header, before its pixels are (STUDIO_INPUT_MAX_PIXELS: a decompression bomb).
Parsing reads only the header; the pixels are decoded into the canonical PNG the engine makes
(engine.canonical_image, canonical_mask) when the recipe first needs its hash, which
recipes.submit asks for only after the user's limits allow another job.
"""

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from django.conf import settings

from .engine.inputs import (
    ImageRef,
    InputError,
    canonical_image,
    canonical_mask,
    decode_data_url,
    header_size,
    mask_size_error,
)


class UnreadableImage(ValueError):
    """An image whose header passed but whose pixels cannot be read: refused by `field`."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def limits() -> dict[str, int]:
    return {"max_bytes": settings.STUDIO_INPUT_MAX_BYTES,
            "max_pixels": settings.STUDIO_INPUT_MAX_PIXELS}


@dataclass(frozen=True)
class ImageData:
    """An input image as the request holds it once parsed: the bytes sent, whose format and
    header size are checked, and its size (EXIF orientation applied). ``png`` and ``sha256``
    are the canonical PNG the engine makes of it and its hash, made on first use."""

    sent: bytes = field(repr=False)
    width: int
    height: int

    type_error = "Send an image: base64 text or a data: URL."
    what = "image"
    field_name = "init_image"

    @cached_property
    def _canonical(self) -> tuple[bytes, str]:
        try:
            png, ref = canonical_image(self.sent, **limits())
        except InputError as exc:
            raise UnreadableImage(self.field_name, f"The {self.what} {exc}.") from None
        if (ref.width, ref.height) != (self.width, self.height):  # an EXIF turn found late
            raise UnreadableImage(self.field_name, f"The {self.what}'s orientation is stored "
                                  "after its pixels; save it again without EXIF data.")
        return png, ref.sha256

    @property
    def png(self) -> bytes:
        return self._canonical[0]

    @property
    def sha256(self) -> str:
        return self._canonical[1]


@dataclass(frozen=True)
class MaskData(ImageData):
    """A mask (engine.canonical_mask): greyscale, white where the image is repainted;
    ``inverted`` swaps black and white (A1111's `inpainting_mask_invert`)."""

    inverted: bool = False

    type_error = "Send a mask image: base64 text or a data: URL."
    what = "mask"
    field_name = "mask"

    @cached_property
    def _canonical(self) -> tuple[bytes, str]:
        try:
            png, ref, size = canonical_mask(self.sent, **limits(), invert=self.inverted)
        except InputError as exc:
            raise UnreadableImage(self.field_name, f"The {self.what} {exc}.") from None
        if size != (self.width, self.height):
            raise UnreadableImage(self.field_name, f"The {self.what}'s orientation is stored "
                                  "after its pixels; save it again without EXIF data.")
        return png, ref.sha256


def typed(kind: type[ImageData], raw: Any, *, inverted: bool = False) -> ImageData:
    """An input image or mask from base64 text, a data: URL, bytes or an uploaded file, each
    capped at STUDIO_INPUT_MAX_BYTES before it is decoded, and at STUDIO_INPUT_MAX_PIXELS
    from its header; nothing else of it is read yet. One already typed is kept."""
    if isinstance(raw, kind):
        return raw
    try:
        data = _image_bytes(kind, raw, limits()["max_bytes"])
        width, height = header_size(data, **limits())
    except InputError as exc:
        raise ValueError(f"The {kind.what} {exc}.") from None
    extra = {"inverted": inverted} if kind is MaskData else {}
    return kind(sent=data, width=width, height=height, **extra)


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
    ref = ImageRef(sha256="", width=image.width, height=image.height)  # sizes only
    problem = mask_size_error(ref, (mask.width, mask.height))
    return {"mask": f"The mask {problem}."} if problem else {}
