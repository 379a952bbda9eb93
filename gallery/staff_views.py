"""The staff review queue: reported and hidden images, with bulk hide, restore and dismiss."""

import uuid

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.paginator import Paginator
from django.shortcuts import redirect, render

from . import moderation
from .models import Image, ModerationEvent
from .services import GalleryError


@staff_member_required
def review_queue(request):
    if request.method == "POST":
        images = Image.objects.filter(pk__in=_uuids(request.POST.getlist("image")))
        try:
            count = moderation.moderation_apply(
                action=request.POST.get("action", ""), images=images, actor=request.user,
                reason=request.POST.get("reason", ""),
            )
            messages.success(request, f"Done: {request.POST['action']} on {count} image(s).")
        except GalleryError as exc:
            messages.error(request, str(exc))
        return redirect("review_queue")
    context = {
        "page": Paginator(moderation.review_queue(), 50).get_page(request.GET.get("page")),
        "events": ModerationEvent.objects.select_related("actor")[:20],
    }
    return render(request, "gallery/review_queue.html", context)


def _uuids(values: list[str]) -> list[uuid.UUID]:
    found = []
    for value in values:
        try:
            found.append(uuid.UUID(value))
        except ValueError:
            continue  # a tampered form field selects nothing
    return found
