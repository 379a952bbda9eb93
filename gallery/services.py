"""Gallery rules. Visibility is decided here and nowhere else."""

from django.contrib.postgres.search import SearchVector
from django.db.models import Q, QuerySet

from generation.models import Job, Output
from studio.services import get_team_for_user

from .models import Image, Visibility


def visible_images(user) -> QuerySet[Image]:
    """Every image `user` may see: public ones not hidden, their team's not hidden, their own
    (hidden or not), and everything for staff."""
    images = Image.objects.select_related("output", "owner", "team")
    if getattr(user, "is_staff", False):
        return images
    public = Q(visibility=Visibility.PUBLIC, hidden=False)
    if not getattr(user, "is_authenticated", False):
        return images.filter(public)
    team = Q(visibility=Visibility.TEAM, hidden=False, team__memberships__user=user)
    return images.filter(public | team | Q(owner=user)).distinct()


def get_image_for_user(*, user, image_id) -> Image | None:
    """The one door to an image and its file: None (a 404) for what the user may not see."""
    return visible_images(user).filter(pk=image_id).first()


def images_create_for_job(*, job: Job, outputs: list[Output]) -> list[Image]:
    """A private gallery entry per output of a job that just succeeded."""
    recipe = job.recipe
    images = [
        Image.objects.create(
            output=output, owner=job.owner, prompt=recipe.get("prompt", ""),
            model_name=recipe.get("model", {}).get("name", ""),
            sampler=recipe.get("sampler", ""),
            seed=output.recipe.get("seed", 0) + output.recipe.get("batch_index", 0),
        )
        for output in outputs
    ]
    index_prompts(Image.objects.filter(pk__in=[image.pk for image in images]))
    return images


def index_prompts(images: QuerySet[Image]) -> None:
    """Refresh the full-text search vector of these images from their prompts."""
    images.update(search=SearchVector("prompt", config="english"))


class GalleryError(Exception):
    """A gallery change the rules forbid; its message is shown as is."""


def image_set_visibility(*, image: Image, actor, visibility: str, team_id=None) -> None:
    if image.owner_id != actor.pk:
        raise GalleryError("Only the image's owner can change who sees it.")
    if visibility not in Visibility.values:
        raise GalleryError(f"Unknown visibility “{visibility}”.")
    team = None
    if visibility == Visibility.TEAM:
        team = get_team_for_user(user=actor, team_id=team_id) if team_id else None
        if team is None:
            raise GalleryError("Choose one of your teams to share with.")
    image.visibility, image.team = visibility, team
    image.save(update_fields=["visibility", "team"])
