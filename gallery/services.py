"""Gallery rules. Who sees what is the models' rule (gallery.models.SharedQuerySet); every
image is reached through `get_image_for_user`."""

from urllib.parse import urlencode

from django.contrib.postgres.search import SearchVector
from django.db import transaction
from django.db.models import QuerySet, Value

from generation.models import Job, Output, StoredRecipe
from studio.services import as_uuid, get_team_for_user

from .models import Image, Like, Visibility


def visible_images(user) -> QuerySet[Image]:
    """Every image `user` may see (Image.objects.visible_to), ready for pages and listings."""
    # An output's trajectory frames are read by its page alone, not by listings and files.
    images = Image.objects.select_related("output", "owner", "team").defer("output__trajectory")
    return images.visible_to(user)


def get_image_for_user(*, user, image_id) -> Image | None:
    """The one door to an image and its file: None (a 404) for what the user may not see,
    and for an id that is not a UUID at all (ids also arrive in form fields)."""
    image_id = as_uuid(image_id)
    if image_id is None:
        return None
    return visible_images(user).filter(pk=image_id).first()


def images_create_for_job(*, job: Job, outputs: list[Output]) -> list[Image]:
    """A private gallery entry per output of a job that just succeeded."""
    recipe = job.recipe
    prompt = recipe.get("prompt", "")
    return [
        Image.objects.create(
            output=output, owner_id=job.owner_id, prompt=prompt,
            model_name=recipe.get("model", {}).get("name", ""),
            sampler=recipe.get("sampler", ""),
            seed=output.image_seed,
            # Indexed as it is inserted: an UPDATE after it cost every finished job a statement.
            search=prompt_vector(prompt),
        )
        for output in outputs
    ]


def prompt_vector(prompt: str) -> SearchVector:
    """A prompt's full-text search vector, as an image's `search` holds it."""
    return SearchVector(Value(prompt), config="english")


class GalleryError(Exception):
    """A gallery change the rules forbid; its message is shown as is."""


def resolve_visibility(*, actor, visibility: str, team_id=None):
    """(visibility, team) for something `actor` shares: a team only when it is one of theirs.
    Images and collections follow the same rule."""
    if visibility not in Visibility.values:
        # Not quoted back: it is the sender's text, of any length.
        raise GalleryError("Choose a visibility: private, team or public.")
    if visibility != Visibility.TEAM:
        return visibility, None
    team = get_team_for_user(user=actor, team_id=team_id) if team_id else None
    if team is None:
        raise GalleryError("Choose one of your teams to share with.")
    return visibility, team


def image_set_visibility(*, image: Image, actor, visibility: str, team_id=None) -> None:
    if image.owner_id != actor.pk:
        raise GalleryError("Only the image's owner can change who sees it.")
    image.visibility, image.team = resolve_visibility(
        actor=actor, visibility=visibility, team_id=team_id
    )
    image.save(update_fields=["visibility", "team"])


def image_delete(*, image: Image, actor) -> None:
    """Delete an image for its owner: the gallery entry, its output row and the PNG file
    (once the deletion commits: generation/files.py). The job stays: it is the owner's
    history."""
    if image.owner_id != actor.pk:
        raise GalleryError("Only the image's owner can delete it.")
    image.output.delete()  # cascades to the image, its likes, reports and reproductions


@transaction.atomic
def like_toggle(*, image: Image, user) -> bool:
    """Like the image, or take the like back; returns whether the user now likes it.

    The image row is locked and the count recomputed from the likes, so concurrent toggles
    by many users leave like_count equal to the number of likes."""
    Image.objects.select_for_update().filter(pk=image.pk).first()
    deleted, _ = Like.objects.filter(image=image, user=user).delete()
    if not deleted:
        Like.objects.create(image=image, user=user)
    count = Like.objects.filter(image=image).count()
    Image.objects.filter(pk=image.pk).update(like_count=count)
    image.like_count = count
    return not deleted


def remix_query(recipe: dict) -> str:
    """Query parameters that prefill the generate page with a recipe (generation.recipes
    .form_initial reads them). One image, with its own seed. An input image is not a query
    parameter: "Use as input" brings an image to the page."""
    stored = StoredRecipe(recipe)
    fields = {
        "prompt": recipe.get("prompt", ""),
        "negative_prompt": recipe.get("negative_prompt", ""),
        "model": (recipe.get("model") or {}).get("name", ""),
        "sampler": recipe.get("sampler", ""),
        "steps": recipe.get("steps", ""),
        "guidance_scale": recipe.get("guidance_scale", ""),
        "seed": stored.image_seed,
        "width": recipe.get("width", ""),
        "height": recipe.get("height", ""),
    }
    if stored.subseed_strength:
        fields["subseed"] = stored.image_subseed
        fields["subseed_strength"] = stored.subseed_strength
    hires = recipe.get("hires")
    if isinstance(hires, dict):
        fields.update({f"hires_{key}": hires.get(key)
                       for key in ("scale", "steps", "strength", "upscaler")})
    return urlencode({key: value for key, value in fields.items() if value not in ("", None)})
