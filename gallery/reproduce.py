"""Reproduce and verify: run a recipe again as a new job and compare the pixels.

The recipe is re-run as recorded (the whole batch, the same scheduler config, docs/architecture.md
§4) on this server's copy of the model, looked up by name: a recipe's own `model.source` is never
used, since an imported file could name any path. Threads, device and dtype are this
server's (generation.services.job_submit), so a CPU image made with another thread count
may come out within one level rather than identical. When the server's weights are not the
recipe's, reproducing is refused before anything is queued.

The batch's other images are made too (an image's pixels depend on its batch) but never
leave the worker: the job reveals only the original's place in it (Job.reveals), so whoever
asked gets that one image, its previews and its frames, and nothing of its siblings, which
may be private to someone else.

An image made from an input image (and mask) is re-run from the same ones, found by the
recipe's hashes among the original job's inputs, and stored for whoever reproduces it: the
reproduction is refused, saying so, when one is gone.
"""

import logging
from dataclasses import replace

from django.conf import settings
from django.db import transaction
from PIL import Image as PILImage

from generation import engine, inputs, recipes, registry
from generation.models import InputImage, Job
from generation.services import NoWorkerForModel, job_submit

from .imports import import_recipe
from .models import Image, PngImport, Reproduction
from .services import GalleryError, visible_images

log = logging.getLogger(__name__)

LORA_TAG = "<lora:"


class ReproduceRefused(GalleryError):
    """This recipe cannot be reproduced here; the message says why."""


def _server_model(name: str, recipe_hash: str) -> engine.ModelRef:
    """This server's model of that name, unless its weights are known to differ from the
    recipe's. The server knows its hash once a worker or `manage.py models` has hashed the
    weights (a web request never hashes, generation.registry); until then the queued recipe
    keeps the recipe's own hash, and the worker refuses weights that differ from it."""
    try:
        model = registry.get(name)
    except engine.ModelLoadError as exc:
        raise ReproduceRefused(f"The model “{name}” cannot be read right now: {exc}") from exc
    if model is None:
        raise ReproduceRefused(f"This server has no model called “{name}”, so it cannot "
                               "reproduce the image.")
    # A1111 parameters carry only the first 10 hex digits of the hash.
    if not recipe_hash or (model.hash and not model.hash.startswith(recipe_hash)):
        raise ReproduceRefused(
            f"The weights of “{name}” have changed since this image was made (the recipe says "
            f"{recipe_hash[:12] or 'nothing'}, this server has {model.hash[:12]}), so the same "
            "pixels cannot be made again. Remix it instead."
        )
    return model


def studio_recipe(recipe_json: dict) -> dict:
    """A stored Studio recipe, checked and ready to queue as one job of its whole batch."""
    try:
        recipe = engine.Recipe.from_json(recipe_json)
    except engine.RecipeError as exc:
        raise ReproduceRefused(f"The recipe is incomplete: {exc}") from exc
    model = _server_model(recipe.model.name, recipe.model.hash)
    # The recipe's full hash, which the worker checks the weights against before it runs.
    recipe = replace(recipe, model=replace(model, hash=recipe.model.hash,
                                           family=recipe.model.family))
    blocked = recipes.blocked_phrase_in(recipe.prompt)
    if blocked:
        raise ReproduceRefused(f"The prompt contains “{blocked}”, which this server does not "
                               "allow.")
    _check_fast_path(recipe)
    try:
        # With its own batch_index, which must name an image of its batch: the job reveals it.
        engine.validate_recipe(recipe)
    except engine.RecipeError as exc:
        raise ReproduceRefused(f"The recipe cannot run here: {exc}") from exc
    return replace(recipe, batch_index=0).to_json()


def _check_fast_path(recipe: engine.Recipe) -> None:
    """A recipe that ran with another compile mode or memory format than this server's
    workers use would have a worker load and prepare another copy of the model (a compile
    takes minutes): anyone may upload such a file, so only the server's own run here."""
    ran = recipe.fast_path
    ours = engine.FastPath(compile=settings.STUDIO_COMPILE,
                           channels_last=settings.STUDIO_CHANNELS_LAST).loaded
    if ran is not None and ran.loaded not in (engine.FastPath(), ours):
        raise ReproduceRefused(
            f"The image was made with compile mode “{ran.compile}” and channels-last "
            f"{'on' if ran.channels_last else 'off'}, which this server's workers do not "
            "run; it cannot be reproduced here.")


def a1111_recipe(fields: dict) -> dict:
    """A recipe from AUTOMATIC1111 parameters (engine.parse_parameters): one image, its own
    seed. They name the request's fields as Studio does (generation/job_request.py), but
    `cfg_scale`; the others they hold, such as `model_hash`, the request ignores. Their
    hash is A1111's first 10 hex digits, which the worker cannot check against the weights,
    so the server's own hash must be known already."""
    if LORA_TAG in fields.get("prompt", ""):
        raise ReproduceRefused(
            "This image was made with LoRAs (a <lora:…> tag in its prompt). A1111's parameters "
            "name each LoRA by a short hash that cannot tell this server's files apart, so the "
            "same pixels cannot be promised; Studio's own PNGs record each LoRA's file. Remix "
            "it instead."
        )
    name = fields.get("model", "")
    if not _server_model(name, fields.get("model_hash", "")).hash:
        raise ReproduceRefused(
            f"This server has not hashed the weights of “{name}” yet, so it cannot tell "
            "whether they are the ones this image was made with. Try again after the server "
            "has made an image with this model."
        )
    if fields.get("denoising_strength") is not None and fields.get("hires_scale") is None:
        raise ReproduceRefused(
            "This image was made from an input image (A1111's img2img or inpainting), which "
            "its parameters do not hold, so the same pixels cannot be made again here."
        )
    params = {**fields, "guidance_scale": fields.get("cfg_scale"), "batch_size": 1,
              "hires_strength": fields.get("denoising_strength")}
    try:
        return recipes.recipe_from_params(params)
    except recipes.Refused as exc:
        raise ReproduceRefused(f"The parameters cannot run here: {exc}") from exc


def reproduction_start(*, user, image: Image | None = None,
                       imported: PngImport | None = None) -> Reproduction:
    """Queue the re-run of an image's (or an imported file's) recipe for `user`, revealing
    only the original's image of the batch.

    The caller got the original through its door. Raises ReproduceRefused, or
    generation.services.LimitExceeded when the user may not queue another job now.
    """
    if image is not None:
        recipe = image.output.recipe
        job_recipe = studio_recipe(recipe)
        sent = input_files(recipe, image.output.job.inputs.all())
    elif imported.recipe:
        recipe = imported.recipe
        job_recipe = studio_recipe(recipe)
        sent = input_files(recipe, usable_inputs(user, recipe))
    else:
        recipe = import_recipe(imported)
        job_recipe = a1111_recipe(imported.fields)
        sent = []
    with transaction.atomic():
        try:
            job = job_submit(user=user, recipe=job_recipe, reveals=recipe.get("batch_index", 0),
                             inputs=sent)
        except NoWorkerForModel as exc:
            raise ReproduceRefused(exc.message) from exc
        return Reproduction.objects.create(
            job=job, image=image, imported=imported, batch_index=job.reveals
        )


def usable_inputs(user, recipe: dict) -> list[InputImage]:
    """The stored inputs an imported recipe names that `user` may use: their own, or those
    of an image they may see (whoever may see an output may see its inputs). A hash alone
    opens nothing: anyone can write one into a file."""
    named = list(inputs.named_by(recipe).values())
    own = InputImage.objects.filter(owner=user, sha256__in=named)
    seen = InputImage.objects.filter(
        sha256__in=named, jobs__outputs__gallery_image__in=visible_images(user))
    return list(own) + list(seen.distinct())


def input_files(recipe: dict, candidates) -> list[dict]:
    """The inputs the recipe names, read from the storage and checked against its hashes,
    as job_submit stores them for the one who reproduces it; ReproduceRefused when one is
    gone."""
    found = {image.sha256: image for image in candidates}
    try:
        named = inputs.files_named(recipe, found.get)
    except inputs.InputGone as exc:
        raise ReproduceRefused(str(exc)) from exc
    return [{"png": data, "sha256": image.sha256, "width": image.width,
             "height": image.height, "kind": image.kind} for image, data in named]


def reproduction_verify(reproduction: Reproduction) -> None:
    """Compare the re-run's image with the original once the job has succeeded. Safe to call
    again: a verdict is written once."""
    if reproduction.verdict or reproduction.job.status != Job.Status.SUCCEEDED:
        return
    output = reproduction.output
    if output is None:
        return
    try:
        with reproduction.original_file.open("rb") as a, output.image.open("rb") as b:
            comparison = engine.compare_images(PILImage.open(a), PILImage.open(b))
    except OSError:  # a file deleted meanwhile, or unreadable: no verdict rather than a 500
        log.warning("cannot compare reproduction %s", reproduction.pk, exc_info=True)
        return
    result = comparison.to_json()
    Reproduction.objects.filter(pk=reproduction.pk, verdict="").update(
        verdict=result["verdict"], max_diff=result["max_diff"], psnr=result["psnr"]
    )
    reproduction.refresh_from_db()


def verify_after_job(*, job: Job) -> None:
    """The job_succeeded receiver's part: a failed comparison must never undo the job's
    outputs (it runs in their transaction), so it is contained in a savepoint and logged;
    the image page compares again when it finds no verdict."""
    reproduction = Reproduction.objects.filter(job=job).select_related("job").first()
    if reproduction is None:
        return
    reproduction.job.status = Job.Status.SUCCEEDED  # updated by a query in this transaction
    try:
        with transaction.atomic():
            reproduction_verify(reproduction)
    except Exception:
        log.exception("comparing reproduction %s failed", reproduction.pk)


def reproductions_for(*, user, image: Image | None = None,
                      imported: PngImport | None = None) -> list[Reproduction]:
    """The user's reproductions of this original, newest first, each verified if it can be."""
    if not getattr(user, "is_authenticated", False):
        return []
    found = Reproduction.objects.filter(job__owner=user).select_related("job")
    found = found.filter(image=image) if image is not None else found.filter(imported=imported)
    found = list(found[:5])
    for reproduction in found:
        reproduction_verify(reproduction)
    return found


def get_reproduction_for_user(*, user, reproduction_id) -> Reproduction | None:
    """The one door: the person who asked for it, and staff."""
    if not getattr(user, "is_authenticated", False):
        return None
    found = Reproduction.objects.select_related("job")
    if not user.is_staff:
        found = found.filter(job__owner=user)
    return found.filter(pk=reproduction_id).first()
