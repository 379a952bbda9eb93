"""Reports, the staff review queue and the audit log."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from gallery import moderation
from gallery.models import ModerationEvent, Report, Visibility

from .test_collections import run_together

pytestmark = pytest.mark.django_db


@pytest.fixture
def reported(make_image, alice, as_viewer):
    image = make_image(alice, Visibility.PUBLIC)
    as_viewer("carol").post(reverse("image_report", args=[image.pk]), {"reason": "spam"})
    return image


def test_a_signed_in_user_reports_a_public_image(reported, carol):
    report = Report.objects.get(image=reported)
    assert (report.reporter, report.reason, report.status) == (carol, "spam", "open")


def test_a_report_needs_a_reason(make_image, alice, as_viewer):
    image = make_image(alice, Visibility.PUBLIC)
    as_viewer("carol").post(reverse("image_report", args=[image.pk]), {"reason": "  "})
    assert not Report.objects.exists()


def test_team_images_cannot_be_reported(make_image, alice, team, as_viewer):
    image = make_image(alice, Visibility.TEAM, team=team)
    as_viewer("bob").post(reverse("image_report", args=[image.pk]), {"reason": "meh"})
    assert not Report.objects.exists()


@pytest.mark.parametrize("viewer", ["alice", "bob", "carol"])
def test_the_review_queue_is_for_staff(as_viewer, viewer):
    response = as_viewer(viewer).get(reverse("review_queue"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_staff_hide_then_restore_from_the_queue(reported, as_viewer):
    staff = as_viewer("admin")
    queue = staff.get(reverse("review_queue"))
    assert reported in queue.context["page"] and "spam" in queue.content.decode()
    staff.post(reverse("review_queue"), {"action": "hide", "image": [reported.pk], "reason": ""})
    reported.refresh_from_db()
    assert reported.hidden and reported.hidden_reason == "spam"  # the reports' reasons
    assert Report.objects.get(image=reported).status == "actioned"
    assert as_viewer("carol").get(reported.get_absolute_url()).status_code == 404
    owner_page = as_viewer("alice").get(reported.get_absolute_url()).content.decode()
    assert "Hidden by a moderator: spam" in owner_page
    as_viewer("admin").post(reverse("review_queue"), {"action": "restore", "image": [reported.pk]})
    assert as_viewer("carol").get(reported.get_absolute_url()).status_code == 200
    actions = list(ModerationEvent.objects.order_by("created").values_list("action", flat=True))
    assert actions == ["hide", "restore"]


def test_dismiss_closes_the_reports_and_keeps_the_image(reported, as_viewer):
    as_viewer("admin").post(reverse("review_queue"), {"action": "dismiss", "image": [reported.pk]})
    reported.refresh_from_db()
    assert not reported.hidden
    assert Report.objects.get(image=reported).status == "dismissed"
    assert ModerationEvent.objects.get().action == "dismiss"


def test_the_admin_bulk_actions_hide_and_log(reported, as_viewer, admin):
    as_viewer("admin").post(
        reverse("admin:gallery_image_changelist"),
        {"action": "hide", "_selected_action": [reported.pk]},
    )
    reported.refresh_from_db()
    assert reported.hidden
    assert ModerationEvent.objects.get().actor == admin


def test_the_audit_log_outlives_a_deleted_image(reported, as_viewer):
    as_viewer("admin").post(reverse("review_queue"), {"action": "hide", "image": [reported.pk]})
    as_viewer("alice").post(reverse("image_delete", args=[reported.pk]))
    event = ModerationEvent.objects.get()
    assert event.image is None and event.image_uuid == reported.pk


def test_a_tampered_selection_changes_nothing(reported, as_viewer):
    response = as_viewer("admin").post(
        reverse("review_queue"), {"action": "hide", "image": ["nope"]}
    )
    assert response.status_code == 302
    assert not ModerationEvent.objects.exists()


def test_each_reporter_sends_at_most_the_daily_cap_of_reports(make_image, alice, carol,
                                                              as_viewer, settings):
    settings.STUDIO_MAX_REPORTS_PER_DAY = 2
    images = [make_image(alice, Visibility.PUBLIC) for _ in range(3)]
    client = as_viewer("carol")
    for image in images:
        answer = client.post(reverse("image_report", args=[image.pk]), {"reason": "spam"},
                             follow=True)
    assert "2 reports in the last 24 hours" in answer.content.decode()
    assert Report.objects.filter(reporter=carol).count() == 2
    # A day later there is room again.
    Report.objects.update(created=timezone.now() - timedelta(hours=25))
    moderation.report_create(image=images[2], reporter=carol, reason="spam")


@pytest.mark.django_db(transaction=True)
def test_concurrent_reports_cannot_pass_the_daily_cap(make_image, alice, carol, settings):
    settings.STUDIO_MAX_REPORTS_PER_DAY = 3
    image = make_image(alice, Visibility.PUBLIC)
    run_together(8, lambda index: moderation.report_create(image=image, reporter=carol,
                                                           reason=f"spam {index}"))
    assert Report.objects.filter(reporter=carol).count() == 3
