"""Collection pages and changes. Thin: the rules are in gallery.collections."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from studio.services import teams_for_user

from . import collections, selectors
from .models import Collection, Visibility
from .services import GalleryError, get_image_for_user


def _collection_or_404(request, collection_id) -> Collection:
    collection = collections.get_collection_for_user(
        user=request.user, collection_id=collection_id
    )
    if collection is None:
        raise Http404
    return collection


@login_required
def collection_list(request):
    context = {
        "mine": collections.collections_owned(request.user),
        "shared": collections.visible_collections(request.user)
        .exclude(owner=request.user).order_by("-created")[:50],
        "teams": teams_for_user(request.user),
        "visibilities": Visibility.choices,
    }
    return render(request, "gallery/collection_list.html", context)


@login_required
@require_POST
def collection_create(request):
    try:
        collection = collections.collection_create(
            owner=request.user, name=request.POST.get("name", ""),
            visibility=request.POST.get("visibility", Visibility.PRIVATE),
            team_id=request.POST.get("team") or None,
        )
    except GalleryError as exc:
        messages.error(request, str(exc))
        return redirect("collection_list")
    image_id = request.POST.get("image")
    image = get_image_for_user(user=request.user, image_id=image_id) if image_id else None
    if image is not None:
        collections.collection_add_image(collection=collection, actor=request.user, image=image)
        messages.success(request, f"Added to “{collection.name}”.")
        return redirect(image)
    return redirect(collection)


def collection_detail(request, collection_id):
    collection = _collection_or_404(request, collection_id)
    is_owner = collection.owner_id == request.user.pk
    context = {
        "collection": collection,
        "images": selectors.listing_window(
            collections.collection_images(collection=collection, user=request.user),
            sort="collection", size=selectors.PAGE_SIZE, after=request.GET.get("after", ""),
            before=request.GET.get("before", "")),
        "is_owner": is_owner,
        "teams": teams_for_user(request.user) if is_owner else [],
        "visibilities": Visibility.choices,
    }
    return render(request, "gallery/collection_detail.html", context)


def _change(request, collection_id, change, done: str):
    """Run one owner-only change and say how it went."""
    collection = _collection_or_404(request, collection_id)
    try:
        change(collection)
        messages.success(request, done)
    except GalleryError as exc:
        messages.error(request, str(exc))
    return collection


@login_required
@require_POST
def image_collect(request, image_id):
    image = get_image_for_user(user=request.user, image_id=image_id)
    if image is None:
        raise Http404
    _change(request, request.POST.get("collection"), lambda c: collections.collection_add_image(
        collection=c, actor=request.user, image=image), "Added to the collection.")
    return redirect(image)


@login_required
@require_POST
def collection_remove(request, collection_id):
    collection = _change(request, collection_id, lambda c: collections.collection_remove_image(
        collection=c, actor=request.user, image_id=request.POST.get("image")),
        "Removed from the collection.")
    return redirect(collection)


@login_required
@require_POST
def collection_visibility(request, collection_id):
    collection = _change(request, collection_id, lambda c: collections.collection_set_visibility(
        collection=c, actor=request.user, visibility=request.POST.get("visibility", ""),
        team_id=request.POST.get("team") or None), "Saved who can see the collection.")
    return redirect(collection)


@login_required
@require_POST
def collection_delete(request, collection_id):
    collection = _collection_or_404(request, collection_id)
    try:
        collections.collection_delete(collection=collection, actor=request.user)
    except GalleryError as exc:
        messages.error(request, str(exc))
        return redirect(collection)
    messages.success(request, "The collection is deleted; its images are not.")
    return redirect("collection_list")
