"""Input images and masks (img2img, inpainting): stored with the jobs that start from them and
read back through Django's storage, never by a filesystem path (media may move off this disk).

A recipe names its inputs by the sha256 of their canonical PNG (engine.canonical_image,
canonical_mask); each owner keeps one row and one file per hash, shared by every job of
theirs that sends the same image. Inputs are private to their owner; whoever may see an
output may see the inputs it was made from, through the gallery's door to the output
(gallery.views.image_input). Nothing here checks who asks: callers have passed a door.
"""

import hashlib
import logging
from collections.abc import Callable, Iterable

from django.core.files.base import ContentFile
from django.urls import reverse

from .models import InputImage, Job, Output

log = logging.getLogger(__name__)

# Where a recipe names each kind of input: {"init_image": {"sha256", ...}, "mask": {...}}.
RECIPE_KEYS = {InputImage.Kind.IMAGE: "init_image", InputImage.Kind.MASK: "mask"}
URL_NAMES = {InputImage.Kind.IMAGE: "image_input", InputImage.Kind.MASK: "image_mask"}


def store(*, owner, png: bytes, sha256: str, width: int, height: int,
          kind: str) -> InputImage:
    """The owner's input with this hash, stored now if they have none: the same image sent
    again is one row and one file. Call it inside the transaction that creates the job,
    under the owner's lock (services.job_submit), so two submits of one image take turns.

    The file is written before the row commits. A submit that rolls back leaves it behind,
    unreachable (every door reads the row first); the next store of that hash by that owner
    replaces it, since the name is built from both."""
    found = InputImage.objects.filter(owner=owner, sha256=sha256).first()
    if found is not None:
        return found
    image = InputImage(owner=owner, sha256=sha256, kind=kind, width=width, height=height)
    name = image.file.field.generate_filename(image, f"{sha256}.png")
    storage = image.file.storage
    if storage.exists(name):  # left by a submit that rolled back; maybe written in part
        storage.delete(name)
    image.file.save(name, ContentFile(png), save=False)
    image.save()
    return image


def read(image: InputImage) -> bytes:
    """The input's PNG bytes; OSError when its file cannot be read."""
    with image.file.open("rb") as file:
        return file.read()


def files_for(job: Job) -> dict[str, bytes]:
    """sha256 -> PNG bytes of each input the job starts from, for engine.generate's `inputs`.
    An input whose file cannot be read is left out, and the engine fails the job naming it
    (engine.InputMissingError)."""
    return readable(job.inputs.all())


def readable(images: Iterable[InputImage]) -> dict[str, bytes]:
    files = {}
    for image in images:
        try:
            files[image.sha256] = read(image)
        except OSError:
            log.warning("input %s (%s) cannot be read", image.pk, image.file.name, exc_info=True)
    return files


def find(sha256: str) -> InputImage | None:
    """A stored input with this hash, whoever sent it: for the server's operator
    (`manage.py reproduce`), who may read every input anyway."""
    return InputImage.objects.filter(sha256=sha256).order_by("created").first()


class InputGone(LookupError):
    """An input a recipe names is not stored here (deleted with its owner's account, or
    never on this server), or its file no longer holds those bytes."""

    def __init__(self, kind: str, sha256: str):
        what = "input image" if kind == InputImage.Kind.IMAGE else "mask"
        super().__init__(f"The {what} this image was made from (sha256 {sha256[:12]}…) is no "
                         "longer stored on this server, so the same pixels cannot be made again.")
        self.kind, self.sha256 = kind, sha256


def files_named(recipe: dict,
                lookup: Callable[[str], InputImage | None]) -> list[tuple[InputImage, bytes]]:
    """Each input the recipe names, found by `lookup(sha256)` and read from storage, its
    bytes checked against the hash: for reproducing it. InputGone for the first missing."""
    found = []
    for kind, sha256 in named_by(recipe).items():
        image = lookup(sha256)
        data = readable([image]).get(sha256) if image is not None else None
        if data is None or hashlib.sha256(data).hexdigest() != sha256:
            raise InputGone(kind, sha256)
        found.append((image, data))
    return found


def named_by(recipe: dict) -> dict[str, str]:
    """{kind: sha256} of the inputs a recipe names (none for txt2img, or a malformed one)."""
    named = {}
    for kind, key in RECIPE_KEYS.items():
        ref = recipe.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("sha256"), str):
            named[kind] = ref["sha256"]
    return named


def of_output(output: Output, kind: str) -> InputImage | None:
    """The input (or mask) the output was made from, kept with its job; None if there is
    none, or it is gone."""
    sha256 = named_by(output.recipe).get(kind)
    if sha256 is None:
        return None
    return output.job.inputs.filter(sha256=sha256, kind=kind).first()


def input_urls(output: Output, *, stored_only: bool = False) -> dict[str, str | None]:
    """`init_image_url` and `mask_url`: where whoever may see the output sees the input and
    mask it was made from (through the gallery's door to the output); None for what its
    recipe names none of. Read from the recipe alone, so listing many outputs reads no rows;
    `stored_only` (one output's page) also leaves out an input no longer stored."""
    named = named_by(output.recipe)
    return {
        f"{key}_url": reverse(URL_NAMES[kind], args=[output.pk])
        if kind in named and (not stored_only or of_output(output, kind) is not None) else None
        for kind, key in RECIPE_KEYS.items()
    }
