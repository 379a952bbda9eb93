"""Moderation: hide, restore and dismiss, each kept in the audit log (ModerationEvent)."""

from django.db import transaction

from .models import Image, ModerationEvent, Report


def report_create(*, image: Image, reporter, reason: str) -> Report:
    reason = reason.strip()
    if not reason:
        raise ValueError("Say what is wrong with the image.")
    return Report.objects.create(image=image, reporter=reporter, reason=reason[:1000])


@transaction.atomic
def images_hide(*, images, actor, reason: str) -> int:
    """Hide images from every public door; their owners see that, and why."""
    count = 0
    for image in images:
        image.hidden, image.hidden_reason = True, reason
        image.save(update_fields=["hidden", "hidden_reason"])
        image.reports.filter(status=Report.Status.OPEN).update(status=Report.Status.ACTIONED)
        ModerationEvent.objects.create(
            image=image, actor=actor, action=ModerationEvent.Action.HIDE, reason=reason
        )
        count += 1
    return count


@transaction.atomic
def images_restore(*, images, actor, reason: str = "") -> int:
    count = 0
    for image in images:
        image.hidden, image.hidden_reason = False, ""
        image.save(update_fields=["hidden", "hidden_reason"])
        ModerationEvent.objects.create(
            image=image, actor=actor, action=ModerationEvent.Action.RESTORE, reason=reason
        )
        count += 1
    return count


@transaction.atomic
def reports_dismiss(*, images, actor, reason: str = "") -> int:
    count = 0
    for image in images:
        image.reports.filter(status=Report.Status.OPEN).update(status=Report.Status.DISMISSED)
        ModerationEvent.objects.create(
            image=image, actor=actor, action=ModerationEvent.Action.DISMISS, reason=reason
        )
        count += 1
    return count
