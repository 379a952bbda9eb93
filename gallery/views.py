from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import FileResponse, Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from studio.services import get_team_for_user, teams_for_user

from . import selectors, services
from .models import Visibility

PAGE_SIZE = 24


def _image_or_404(request, image_id):
    image = services.get_image_for_user(user=request.user, image_id=image_id)
    if image is None:
        raise Http404
    return image


def image_detail(request, image_id):
    image = _image_or_404(request, image_id)
    is_owner = image.owner_id == request.user.pk
    context = {
        "image": image,
        "recipe": image.output.recipe,
        "is_owner": is_owner,
        "teams": teams_for_user(request.user) if is_owner else [],
        "visibilities": Visibility.choices,
    }
    return render(request, "gallery/image_detail.html", context)


def image_file(request, image_id):
    """The PNG, served only after the visibility check: never from a guessable public path."""
    image = _image_or_404(request, image_id)
    response = FileResponse(image.output.image.open("rb"), content_type="image/png")
    public = image.visibility == Visibility.PUBLIC and not image.hidden
    response["Cache-Control"] = "public, max-age=300" if public else "private, max-age=300"
    return response


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


def _listing(request, *, scope: str, title: str, team=None):
    params = request.GET
    images = selectors.gallery_search(
        user=request.user, scope=scope, team=team, query=params.get("q", ""),
        model=params.get("model", ""), sampler=params.get("sampler", ""),
        seed=params.get("seed", ""), sort=params.get("sort", "new"),
    )
    page = Paginator(images, PAGE_SIZE).get_page(params.get("page"))
    query = params.copy()
    query.pop("page", None)
    context = {"page": page, "title": title, "scope": scope, "team": team,
               "params": params, "query": query.urlencode()}
    return render(request, "gallery/list.html", context)


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
