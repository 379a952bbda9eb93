"""Moderation: hide, restore and dismiss, each kept in the audit log (ModerationEvent)."""

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from .limits import check_cap, clean_text
from .models import Image, ModerationEvent, Report
from .services import GalleryError

REASON_MAX = Report._meta.get_field("reason").max_length


def report_create(*, image: Image, reporter, reason: str) -> Report:
    """A signed-in user reports a public image they can see (the caller used its door).
    Private and team images are their owners' business, not the public gallery's. Each
    reporter sends at most STUDIO_MAX_REPORTS_PER_DAY in any 24 hours."""
    if not image.is_public:
        raise GalleryError("Only images in the public gallery can be reported.")
    reason = clean_text(reason, field="reason", max_chars=REASON_MAX)
    if not reason:
        raise GalleryError("Say what is wrong with the image.")
    cap = settings.STUDIO_MAX_REPORTS_PER_DAY
    recent = Report.objects.filter(reporter=reporter,
                                   created__gte=timezone.now() - timedelta(days=1))
    with transaction.atomic():
        check_cap(user=reporter, owned=recent, cap=cap, message=(
            f"You have sent {cap} reports in the last 24 hours, the most one person can: "
            "please try again later."))
        return Report.objects.create(image=image, reporter=reporter, reason=reason)


def review_queue() -> QuerySet[Image]:
    """Images with open reports, most reported first, then hidden ones (to restore)."""
    open_reports = Count("reports", filter=Q(reports__status=Report.Status.OPEN))
    return (
        Image.objects.select_related("owner")
        .annotate(open_reports=open_reports)
        .filter(Q(open_reports__gt=0) | Q(hidden=True))
        .prefetch_related("reports")
        .order_by("-open_reports", "-created")
    )


def _apply(images, *, actor, action: str, reason: str, change) -> int:
    """Apply `change` to each image and record it in the audit log; returns how many."""
    count = 0
    for image in images:
        change(image)
        ModerationEvent.objects.create(image=image, actor=actor, action=action, reason=reason)
        count += 1
    return count


def _close_reports(image: Image, status: str) -> None:
    image.reports.filter(status=Report.Status.OPEN).update(status=status)


@transaction.atomic
def images_hide(*, images, actor, reason: str) -> int:
    """Hide images from every public door; their owners see that, and why."""

    def hide(image: Image) -> None:
        image.hidden, image.hidden_reason = True, reason
        image.save(update_fields=["hidden", "hidden_reason"])
        _close_reports(image, Report.Status.ACTIONED)

    return _apply(images, actor=actor, action=ModerationEvent.Action.HIDE, reason=reason,
                  change=hide)


@transaction.atomic
def images_restore(*, images, actor, reason: str = "") -> int:
    def restore(image: Image) -> None:
        image.hidden, image.hidden_reason = False, ""
        image.save(update_fields=["hidden", "hidden_reason"])

    return _apply(images, actor=actor, action=ModerationEvent.Action.RESTORE, reason=reason,
                  change=restore)


@transaction.atomic
def reports_dismiss(*, images, actor, reason: str = "") -> int:
    return _apply(
        images, actor=actor, action=ModerationEvent.Action.DISMISS, reason=reason,
        change=lambda image: _close_reports(image, Report.Status.DISMISSED),
    )


ACTIONS = {"hide": images_hide, "restore": images_restore, "dismiss": reports_dismiss}


def moderation_apply(*, action: str, images, actor, reason: str = "") -> int:
    """One of the bulk actions by name, for the staff page. Hiding always records a reason,
    since the owner is shown it."""
    if action not in ACTIONS:
        raise GalleryError("Choose an action: hide, restore or dismiss.")
    reason = clean_text(reason, field="reason", max_chars=settings.STUDIO_MAX_TEXT_CHARS)
    if action == "hide" and not reason:
        reason = "; ".join(
            Report.objects.filter(image__in=images, status=Report.Status.OPEN)
            .values_list("reason", flat=True).distinct()[:3]
        ) or "Hidden by a moderator."
    return ACTIONS[action](images=images, actor=actor, reason=reason)
