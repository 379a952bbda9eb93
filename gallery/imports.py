"""Importing an image made by Studio or AUTOMATIC1111: check the upload, read its recipe.

Uploads are untrusted bytes. Before anything is stored they must be a PNG, JPEG or WebP
(as Pillow detects it, whatever the name or content type says), under a size limit in bytes
and in pixels (so a small file that decodes to gigabytes, a decompression bomb, is refused),
and decode completely. The stored name is built from our own UUID, never from the upload's.
"""

import io
import json
import warnings

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import QuerySet
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from generation import engine
from generation.engine.inputs import DEFAULT_HIRES_STRENGTH
from generation.engine.pngmeta import MAX_PARAMETERS_CHARS

from .limits import UploadTooLarge, check_cap
from .models import PngImport
from .services import GalleryError

FORMATS = ("PNG", "JPEG", "WEBP")
# Studio's own images are at most a few megapixels; A1111 upscales reach 4096².
EXIF_IFD, USER_COMMENT = 0x8769, 0x9286


class ImportRefused(GalleryError):
    """The upload was refused; the message says why."""


def max_bytes() -> int:
    return settings.STUDIO_IMPORT_MAX_BYTES


def max_pixels() -> int:
    return settings.STUDIO_IMPORT_MAX_PIXELS


def get_import_for_user(*, user, import_id) -> PngImport | None:
    """The one door to an import: its owner and staff, None (a 404) for everyone else."""
    if not getattr(user, "is_authenticated", False):
        return None
    imports = PngImport.objects.all() if user.is_staff else PngImport.objects.filter(owner=user)
    return imports.filter(pk=import_id).first()


def imports_owned(user) -> QuerySet[PngImport]:
    return PngImport.objects.filter(owner=user)


def check_image(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) of an acceptable image, or ImportRefused saying why not.

    Pillow's own bomb guard (Image.MAX_IMAGE_PIXELS) is process-wide and only warns below
    twice its limit, so this checks our limit itself, from the header, before decoding, and
    turns Pillow's warning into a refusal as well."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data), formats=FORMATS) as image:
                if image.width * image.height > max_pixels():
                    raise ImportRefused(
                        f"The image is {image.width}×{image.height} pixels; "
                        f"at most {max_pixels():,} pixels can be imported."
                    )
                image.load()  # a truncated or corrupt file fails here, not later
                return image.format, image.width, image.height
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
        raise ImportRefused("The image decodes to far too many pixels; it was refused.") from exc
    except UnidentifiedImageError as exc:
        raise ImportRefused("Only PNG, JPEG and WebP images can be imported.") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        # ValueError also covers PNG text chunks that decompress beyond Pillow's limits.
        raise ImportRefused("The file is damaged or is not a complete image.") from exc


def read_metadata(data: bytes, image_format: str) -> tuple[dict | None, str]:
    """The Studio recipe JSON (or None) and the A1111 ``parameters`` text (or ""), refusing
    parameters text too long to parse."""
    recipe, parameters = None, ""
    if image_format == "PNG":
        try:
            recipe, parameters = engine.read_png(data)
        except (engine.RecipeError, ValueError):  # a malformed studio_recipe chunk
            return None, ""
    else:
        parameters = _exif_parameters(data)
    # Pillow hands back up to 1 MB per PNG text chunk and an EXIF comment can be the whole
    # file; A1111 writes a few hundred characters. Refused whole: a cut prompt is another recipe.
    if parameters and len(parameters) > MAX_PARAMETERS_CHARS:
        raise ImportRefused(
            f"The image's parameters text is longer than {MAX_PARAMETERS_CHARS:,} characters, "
            "more than AUTOMATIC1111 writes; the file was refused."
        )
    return (recipe.to_json() if recipe else None), parameters or ""


def check_storable(*, recipe: dict | None, fields: dict, parameters: str) -> None:
    """Refuse what a file says but Postgres cannot keep: a NUL character in any text, or a
    number that is not finite (an A1111 "CFG scale: nan") in the JSON read from it."""
    if _holds_nul([recipe, fields, parameters]):
        raise ImportRefused("The image's metadata holds a NUL character; the file was refused.")
    try:
        json.dumps([recipe, fields], allow_nan=False)
    except ValueError as exc:
        raise ImportRefused(
            "The image's metadata holds a number that is not finite (NaN or infinity); "
            "the file was refused."
        ) from exc


def _holds_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(key) or _holds_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(_holds_nul(item) for item in value)
    return False


def _exif_parameters(data: bytes) -> str:
    """A1111 writes JPEG and WebP parameters into the EXIF UserComment."""
    with PILImage.open(io.BytesIO(data)) as image:
        comment = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    if isinstance(comment, str):
        return comment
    if not isinstance(comment, bytes):
        return ""
    prefix, body = comment[:8], comment[8:]
    if prefix == b"UNICODE\0":
        return body.decode("utf-16-be", errors="replace")
    return body.decode("utf-8", errors="replace")


def import_create(*, owner, upload) -> PngImport:
    """Check an uploaded file, read its recipe and keep both for its owner.

    1. Refuse by size in bytes before reading it into memory (the view's upload handler
       has already stopped reading a larger one).
    2. Check format, pixel count and that it decodes (check_image).
    3. Read the Studio recipe and A1111 parameters (read_metadata).
    4. Within the owner's cap on imports, store under our own name.
    """
    if upload is None:
        raise ImportRefused("Choose an image file to import.")
    if upload.size > max_bytes():
        raise UploadTooLarge("image", max_bytes())
    data = upload.read()
    image_format, width, height = check_image(data)
    recipe, parameters = read_metadata(data, image_format)
    fields = engine.parse_parameters(parameters) if parameters else {}
    check_storable(recipe=recipe, fields=fields, parameters=parameters)
    imported = PngImport(
        owner=owner, format=image_format, width=width, height=height, recipe=recipe,
        parameters=parameters, fields=fields,
    )
    with transaction.atomic():
        cap = settings.STUDIO_MAX_IMPORTS_PER_USER
        check_cap(user=owner, owned=imports_owned(owner), cap=cap, message=(
            f"You have {cap} imported files, the most one person can keep: "
            "delete some to import more."))
        imported.file.save("upload", ContentFile(data), save=False)
        imported.save()
    return imported


def import_recipe(imported: PngImport) -> dict:
    """The import's recipe in the recipe's JSON shape: the Studio recipe when the file had one,
    else what the A1111 parameters say (one image, its own seed)."""
    if imported.recipe:
        return imported.recipe
    fields = imported.fields
    return {
        "prompt": fields.get("prompt", ""),
        "negative_prompt": fields.get("negative_prompt", ""),
        "model": {"name": fields.get("model", ""), "hash": fields.get("model_hash", "")},
        "sampler": fields.get("sampler", ""),
        "steps": fields.get("steps"),
        "guidance_scale": fields.get("cfg_scale"),
        "seed": fields.get("seed"),
        "batch_size": 1,
        "batch_index": 0,
        "subseed": fields.get("subseed", 0),
        "subseed_strength": fields.get("subseed_strength", 0.0),
        "width": fields.get("width"),
        "height": fields.get("height"),
        "hires": a1111_hires(fields),
    }


def a1111_hires(fields: dict) -> dict | None:
    """The hires fix A1111's parameters record, in the recipe's shape: its "Denoising
    strength" is the second pass's when there is a "Hires upscale"."""
    if fields.get("hires_scale") is None:
        return None
    return {"scale": fields["hires_scale"], "steps": fields.get("hires_steps", 0),
            "strength": fields.get("denoising_strength", DEFAULT_HIRES_STRENGTH),
            "upscaler": fields.get("hires_upscaler", "Latent")}


def import_delete(*, imported: PngImport, actor) -> None:
    """Delete an import for its owner. Staff may look at anyone's, but a file is its owner's
    to keep or delete."""
    if imported.owner_id != actor.pk:
        raise GalleryError("Only the person who imported it can delete it.")
    imported.delete()  # its file goes once the deletion commits (gallery/files.py)
