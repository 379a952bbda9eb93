"""Image pages, listings and the actions on one image. Thin: rules live in services."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from generation import inputs
from generation.models import InputImage
from generation.services import LimitExceeded
from studio.services import get_team_for_user, teams_for_user

from . import collections, moderation, selectors, services
from .models import Image, Like, Visibility
from .reproduce import (
    ReproduceRefused,
    get_reproduction_for_user,
    reproduction_start,
    reproduction_verify,
    reproductions_for,
)


def _image_or_404(request, image_id):
    image = services.get_image_for_user(user=request.user, image_id=image_id)
    if image is None:
        raise Http404
    return image


def _wants_json(request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def image_detail(request, image_id):
    image = _image_or_404(request, image_id)
    user = request.user
    is_owner = image.owner_id == user.pk
    context = {
        "image": image,
        "recipe": image.output.recipe,
        "is_owner": is_owner,
        "teams": teams_for_user(user) if is_owner else [],
        "visibilities": Visibility.choices,
        "liked": user.is_authenticated and Like.objects.filter(image=image, user=user).exists(),
        "trajectory": image.output.trajectory,
        "remix_url": reverse("generate") + "?" + services.remix_query(image.output.recipe),
        "my_collections": collections.collections_owned(user),
        "reproductions": reproductions_for(user=user, image=image),
        "can_report": user.is_authenticated and not is_owner and image.is_public,
        # The input image and mask it was made from, or None (image_input below).
        **inputs.input_urls(image.output, stored_only=True),
    }
    return render(request, "gallery/image_detail.html", context)


def _png(image, file) -> FileResponse:
    response = FileResponse(file.open("rb"), content_type="image/png")
    response["Cache-Control"] = ("public, max-age=300" if image.is_public
                                 else "private, max-age=300")
    return response


def image_file(request, image_id):
    """The PNG, served only after the visibility check: never from a guessable public path."""
    image = _image_or_404(request, image_id)
    response = _png(image, image.output.image)
    if request.GET.get("download"):
        response["Content-Disposition"] = f'attachment; filename="studio-{image.seed}.png"'
    return response


def image_input(request, image_id, kind=InputImage.Kind.IMAGE):
    """The input image (or, as image_mask, the mask) the image was made from. Inputs are
    private to their owner, but whoever may see an output may see what it was made from
    (reproducing it needs them): the door is the image's."""
    image = _image_or_404(request, image_id)
    found = inputs.of_output(image.output, kind)
    if found is None:
        raise Http404
    return _png(image, found.file)


def image_mask(request, image_id):
    return image_input(request, image_id, kind=InputImage.Kind.MASK)


@login_required
@require_POST
def image_visibility(request, image_id):
    image = _image_or_404(request, image_id)
    try:
        services.image_set_visibility(
            image=image, actor=request.user, visibility=request.POST.get("visibility", ""),
            team_id=request.POST.get("team") or None,
        )
        messages.success(request, f"The image is now {image.get_visibility_display().lower()}.")
    except services.GalleryError as exc:
        messages.error(request, str(exc))
    return redirect(image)


@login_required
@require_POST
def image_like(request, image_id):
    image = _image_or_404(request, image_id)
    liked = services.like_toggle(image=image, user=request.user)
    if _wants_json(request):
        return JsonResponse({"liked": liked, "like_count": image.like_count})
    return redirect(image)


@login_required
@require_POST
def image_report(request, image_id):
    image = _image_or_404(request, image_id)
    try:
        moderation.report_create(
            image=image, reporter=request.user, reason=request.POST.get("reason", "")
        )
        messages.success(request, "Thank you. A moderator will look at the image.")
    except services.GalleryError as exc:
        messages.error(request, str(exc))
    return redirect(image)


@login_required
@require_POST
def image_delete(request, image_id):
    image = _image_or_404(request, image_id)
    try:
        services.image_delete(image=image, actor=request.user)
    except services.GalleryError as exc:
        messages.error(request, str(exc))
        return redirect(image)
    messages.success(request, "The image and its file are deleted.")
    return redirect("gallery_mine")


@login_required
@require_POST
def image_reproduce(request, image_id):
    image = _image_or_404(request, image_id)
    start_reproduction(request, image=image)
    return redirect(image.get_absolute_url() + "#reproductions")


def start_reproduction(request, **original) -> None:
    """Queue a reproduction and tell the user how it went (images and imports share this)."""
    try:
        reproduction_start(user=request.user, **original)
        messages.success(request, "Reproducing: the verdict appears here when the job is done.")
    except (ReproduceRefused, LimitExceeded) as exc:
        messages.error(request, str(exc))


@login_required
def reproduction_state(request, reproduction_id):
    """JSON for the page that waits on a reproduction."""
    reproduction = get_reproduction_for_user(user=request.user, reproduction_id=reproduction_id)
    if reproduction is None:
        raise Http404
    reproduction_verify(reproduction)
    job = reproduction.job
    return JsonResponse({
        "status": job.status, "step": job.step, "total": job.total_steps, "error": job.error,
        "verdict": reproduction.verdict, "result": reproduction.result_text,
    })


def _listing(request, *, scope: str, title: str, team=None):
    params = request.GET
    search = {"query": params.get("q", ""), "model": params.get("model", ""),
              "sampler": params.get("sampler", ""), "seed": params.get("seed", "")}
    errors = selectors.search_errors(**search)
    sort = params.get("sort", "new")
    sort = sort if sort in selectors.LISTING_SORTS else "new"
    images = Image.objects.none() if errors else selectors.gallery_search(
        user=request.user, scope=scope, team=team, sort=sort, **search
    )
    page = selectors.listing_window(
        images, sort=sort, size=selectors.PAGE_SIZE,
        after=params.get("after", ""), before=params.get("before", ""))
    query = params.copy()
    for cursor in ("after", "before", "page"):  # `page`: no longer a cursor
        query.pop(cursor, None)
    context = {"page": page, "title": title, "scope": scope, "team": team,
               "search_errors": errors,
               "teams": teams_for_user(request.user) if request.user.is_authenticated else [],
               "params": params, "query": query.urlencode()}
    # The page still renders, with the message by the field; the status says it was refused.
    return render(request, "gallery/list.html", context, status=400 if errors else 200)


def gallery_public(request):
    return _listing(request, scope="public", title="Public gallery")


@login_required
def gallery_mine(request):
    return _listing(request, scope="mine", title="My images")


@login_required
def gallery_team(request, team_id):
    team = get_team_for_user(user=request.user, team_id=team_id)
    if team is None:
        raise Http404
    return _listing(request, scope="team", title=f"{team.name}'s gallery", team=team)
