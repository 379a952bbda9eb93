"""Image-to-image inputs: the recipe's parts that name an input image, a mask and a hires fix,
and the one way untrusted image bytes become an input (docs/engine.md, "Image to image").

An input is stored and named by the sha256 of its canonical PNG: RGB for an image, greyscale
for a mask, no metadata. ``canonical_image`` and ``canonical_mask`` read hostile bytes: the
byte count is capped before PIL sees them, the format is one of PNG, JPEG and WebP, and the
pixel count is read from the header and capped before anything is decoded (a decompression
bomb claims a huge size in a few bytes). Light: PIL only, no torch; the web tier uses it.
"""

import base64
import binascii
import hashlib
import io
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

# The engine's own ceilings; Studio's settings pass lower ones (STUDIO_INPUT_MAX_*).
MAX_INPUT_BYTES = 20 * 2**20
MAX_INPUT_PIXELS = 4096 * 4096
FORMATS = ("PNG", "JPEG", "WEBP")
MAX_MASK_BLUR = 64
MIN_HIRES_SCALE, MAX_HIRES_SCALE = 1.0, 4.0
DEFAULT_HIRES_STRENGTH = 0.5
DEFAULT_UPSCALER = "Latent"

# A1111's hires upscalers that Studio runs. Latent ones resize the latents with
# torch.nn.functional.interpolate: (mode, antialias), as A1111's shared.latent_upscale_modes.
LATENT_UPSCALERS = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# Pixel ones decode, resize with PIL, and encode again.
PIXEL_UPSCALERS = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
UPSCALERS = (*LATENT_UPSCALERS, *PIXEL_UPSCALERS)

_SHA256 = re.compile(r"[0-9a-f]{64}")
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)?(;[\w=.+-]+)*;base64,", re.ASCII)


class InputError(ValueError):
    """An input image, mask or data URL that cannot be used; the caller names the field."""


@dataclass(frozen=True)
class ImageRef:
    """The init image: the sha256 of its canonical PNG and its size."""

    sha256: str
    width: int
    height: int

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "width": self.width, "height": self.height}


@dataclass(frozen=True)
class MaskRef:
    """The mask, white where the image is repainted; always the init image's size."""

    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256}


@dataclass(frozen=True)
class Hires:
    """A1111's hires fix: render at the recipe's size, upscale by ``scale``, refine with
    img2img for ``steps`` (0: the recipe's steps) at ``strength``."""

    scale: float
    steps: int = 0
    strength: float = DEFAULT_HIRES_STRENGTH
    upscaler: str = DEFAULT_UPSCALER

    def to_json(self) -> dict[str, Any]:
        return {"scale": self.scale, "steps": self.steps, "strength": self.strength,
                "upscaler": self.upscaler}

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The refined image's size: the base size times ``scale``, down to a multiple of 8."""
        return int(width * self.scale) // 8 * 8, int(height * self.scale) // 8 * 8


def output_size(recipe: Any) -> tuple[int, int]:
    """The size of a recipe's images: its width and height, or its hires fix's."""
    if recipe.hires is None:
        return recipe.width, recipe.height
    return recipe.hires.size(recipe.width, recipe.height)


def steps_run(recipe: Any) -> int:
    """The denoising steps a recipe (a Recipe or its JSON) actually runs: what progress
    counts to. img2img runs ``int(steps * strength)`` of its schedule, as diffusers'
    ``get_timesteps``; a hires fix adds its second pass's."""
    def get(key: str) -> Any:
        return recipe.get(key) if isinstance(recipe, Mapping) else getattr(recipe, key, None)

    steps, strength, hires = get("steps"), get("strength"), get("hires")
    run = steps if strength is None or get("init_image") is None else _partial(steps, strength)
    if hires is None:
        return run
    hires = hires if isinstance(hires, Hires) else Hires(**hires)
    return run + _partial(hires.steps or steps, hires.strength)


def _partial(steps: int, strength: float) -> int:
    return min(int(steps * strength), steps)


# ---- Recipe JSON --------------------------------------------------------------------------

def inputs_json(recipe: Any) -> dict[str, Any]:
    """The recipe's image-to-image keys, as ``Recipe.to_json`` writes them."""
    return {
        "init_image": None if recipe.init_image is None else recipe.init_image.to_json(),
        "strength": recipe.strength,
        "mask": None if recipe.mask is None else recipe.mask.to_json(),
        "mask_blur": recipe.mask_blur,
        "paste_back": recipe.paste_back,
        "hires": None if recipe.hires is None else recipe.hires.to_json(),
    }


_PARTS = {"init_image": (ImageRef, {"sha256", "width", "height"}), "mask": (MaskRef, {"sha256"}),
          "hires": (Hires, {"scale", "steps", "strength", "upscaler"})}


def inputs_from_json(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The recipe's image-to-image parts (objects) read from its JSON, and errors by key for
    malformed ones. A hash must be 64 lowercase hex digits: storage names files by it."""
    fields: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for key, (cls, keys) in _PARTS.items():
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, dict) or not set(value) <= keys or not (
            set(value) >= keys - {"steps", "strength", "upscaler"}
        ):
            errors[key] = f"must be null or an object with {', '.join(sorted(keys))}"
            continue
        if "sha256" in value and not (
            isinstance(value["sha256"], str) and _SHA256.fullmatch(value["sha256"])
        ):
            errors[f"{key}.sha256"] = "must be 64 lowercase hex digits"
            continue
        fields[key] = cls(**value)
    return fields, errors


# ---- Untrusted bytes ----------------------------------------------------------------------

def decode_data_url(text: Any, *, max_bytes: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of base64 text or a ``data:<type>;base64,`` URL, as A1111's and OpenAI's
    clients send images. The text's length is capped before anything is decoded."""
    if not isinstance(text, str):
        raise InputError("must be a base64 string or a data: URL")
    if text.startswith("data:"):
        match = _DATA_URL.match(text)
        if match is None:
            raise InputError("must be a base64 data: URL (data:image/png;base64,...)")
        text = text[match.end():]
    limit = 4 * -(-max_bytes // 3)  # base64 of max_bytes, with its padding
    if len(text) > limit + 2:  # a trailing newline or two, as some encoders write
        raise InputError(f"is larger than {_size(max_bytes)} once decoded")
    try:
        data = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"is not valid base64: {exc}") from exc
    if not data:
        raise InputError("is empty")
    return data


def canonical_image(
    data: bytes, *, max_bytes: int = MAX_INPUT_BYTES, max_pixels: int = MAX_INPUT_PIXELS
) -> tuple[bytes, ImageRef]:
    """An uploaded image as Studio stores it: a PNG of its RGB pixels (EXIF orientation
    applied, alpha and metadata dropped), and its ref. Refuses, by InputError, whatever is
    not a PNG, JPEG or WebP within the limits."""
    image = _open(data, max_bytes=max_bytes, max_pixels=max_pixels).convert("RGB")
    png = _png(image)
    return png, ImageRef(sha256=hashlib.sha256(png).hexdigest(), width=image.width,
                         height=image.height)


def canonical_mask(
    data: bytes, *, max_bytes: int = MAX_INPUT_BYTES, max_pixels: int = MAX_INPUT_PIXELS,
    invert: bool = False,
) -> tuple[bytes, MaskRef, tuple[int, int]]:
    """An uploaded mask as Studio stores it: a greyscale PNG, white where the image is
    repainted, and its ref and size. As A1111 reads masks: an image with transparent
    pixels is masked by its alpha (opaque paint repaints), any other by its brightness.
    ``invert`` swaps black and white (A1111's ``inpainting_mask_invert``)."""
    image = _open(data, max_bytes=max_bytes, max_pixels=max_pixels)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        alpha = rgba.getchannel("A")
        mask = alpha if alpha.getextrema() != (255, 255) else rgba.convert("L")
    else:
        mask = image.convert("L")
    if invert:
        mask = ImageOps.invert(mask)
    png = _png(mask)
    return png, MaskRef(sha256=hashlib.sha256(png).hexdigest()), mask.size


def mask_from_alpha(
    data: bytes, *, max_bytes: int = MAX_INPUT_BYTES, max_pixels: int = MAX_INPUT_PIXELS
) -> bytes | None:
    """OpenAI's edit rule: an image's transparent pixels are the area to edit. A greyscale
    mask PNG, white where transparent (255 - alpha), or None when the image is fully
    opaque."""
    image = _open(data, max_bytes=max_bytes, max_pixels=max_pixels)
    if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
        return None
    alpha = image.convert("RGBA").getchannel("A")
    if alpha.getextrema() == (255, 255):
        return None
    return _png(ImageOps.invert(alpha))


def mask_size_error(image: ImageRef, size: tuple[int, int]) -> str | None:
    """Why a mask of ``size`` cannot go with the image, or None. Studio never resizes a
    mask: a stretched mask repaints what nobody painted."""
    if tuple(size) == (image.width, image.height):
        return None
    return (f"is {size[0]}x{size[1]} but the image is {image.width}x{image.height}; "
            "a mask must be exactly the image's size (it is never resized)")


def open_input(png: bytes) -> Image.Image:
    """A stored canonical PNG (image or mask), decoded, for the worker."""
    image = _open(png, max_bytes=len(png), max_pixels=MAX_INPUT_PIXELS)
    return image.convert("L" if image.mode == "L" else "RGB")


def header_size(data: bytes, *, max_bytes: int, max_pixels: int) -> tuple[int, int]:
    """The size an image's header claims, as it will be once its EXIF orientation is
    applied (as ``canonical_image`` does), with nothing decoded (``open_header``)."""
    with open_header(data, max_bytes=max_bytes, max_pixels=max_pixels) as image:
        width, height = image.size
        # The EXIF block the header held, not getexif(): a PNG's would decode the pixels.
        raw = image.info.get("exif")
    orientation = None
    if isinstance(raw, bytes):
        exif = Image.Exif()
        with _read_errors():
            exif.load(raw)
        orientation = exif.get(EXIF_ORIENTATION)
    return (height, width) if orientation in TURNED else (width, height)


# EXIF's orientation tag, and the values that turn an image a quarter.
EXIF_ORIENTATION = 0x0112
TURNED = (5, 6, 7, 8)


def open_header(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """The image opened lazily, nothing decoded: its bytes, format and the size its header
    claims checked (InputError). What PIL reads as it opens (a PNG's text chunks before the
    image data) is in ``info``."""
    if not isinstance(data, bytes | bytearray) or not data:
        raise InputError("is empty or not a file")
    if len(data) > max_bytes:
        raise InputError(f"is {_size(len(data))}; the most is {_size(max_bytes)}")
    # PIL checks a header's size against its own limit as it opens: it warns above
    # MAX_IMAGE_PIXELS and raises above twice that. Ours is checked next, before anything is
    # decoded, and never lets through what PIL warns of. (No warnings.catch_warnings here:
    # it swaps the process's filters, which is not safe beside other threads.)
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    with _read_errors():
        image = Image.open(io.BytesIO(data), formats=FORMATS)  # lazy: reads the header
    width, height = image.size
    if width * height > limit:
        image.close()
        raise InputError(f"is {width}x{height} pixels; the most is {limit:,} pixels")
    return image


def _open(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """The decoded image, checked first (open_header)."""
    image = open_header(data, max_bytes=max_bytes, max_pixels=max_pixels)
    with _read_errors():
        image.load()
        return ImageOps.exif_transpose(image)


@contextmanager
def _read_errors() -> Iterator[None]:
    """What PIL raises for a file that is not a readable image, as InputError."""
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"claims too many pixels ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise InputError("is not a PNG, JPEG or WebP image") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated, corrupt, text
        raise InputError(f"is not a readable image: {exc}") from exc


def _png(image: Image.Image) -> bytes:
    # A fresh image: no ICC profile, text or EXIF travels into the stored file.
    clean = Image.frombytes(image.mode, image.size, image.tobytes())
    out = io.BytesIO()
    clean.save(out, format="PNG")
    return out.getvalue()


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count:,} bytes"
