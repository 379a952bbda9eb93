"""Report → hide → restore, end to end in Chromium."""

import pytest

from gallery.models import ModerationEvent, Visibility
from tests.e2e.conftest import signed_in
from tests.gallery.conftest import make_image  # noqa: F401  (a fixture)

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def test_report_hide_restore(studio_server, browser, make_image,  # noqa: F811
                             alice, carol, admin):
    image = make_image(alice, Visibility.PUBLIC, prompt="a green triangle")
    url = studio_server.url + image.get_absolute_url()

    # carol reports it, with a reason
    carol_page = signed_in(browser, studio_server, carol).new_page()
    carol_page.goto(url)
    carol_page.get_by_text("Report this image").click()
    carol_page.fill("#report-reason", "copies my work")
    carol_page.get_by_role("button", name="Send report").click()
    carol_page.get_by_text("A moderator will look at the image").wait_for()

    # staff see it in the queue and hide it
    staff = signed_in(browser, studio_server, admin).new_page()
    staff.goto(studio_server.url + "/staff/reports/")
    row = staff.locator("tr", has_text="a green triangle")
    assert "copies my work" in row.inner_text()
    row.get_by_role("checkbox").check()
    staff.get_by_role("button", name="Hide").click()
    staff.get_by_text("Done: hide on 1 image(s).").wait_for()

    # gone for everyone else, explained to its owner
    assert carol_page.goto(url).status == 404
    anonymous = browser.new_context().new_page()
    assert anonymous.goto(url).status == 404
    anonymous.goto(studio_server.url + "/gallery/")
    assert anonymous.get_by_text("a green triangle").count() == 0
    owner = signed_in(browser, studio_server, alice).new_page()
    owner.goto(url)
    assert "Hidden by a moderator: copies my work" in owner.locator(".callout").inner_text()

    # staff restore it
    staff.goto(studio_server.url + "/staff/reports/")
    staff.locator("tr", has_text="a green triangle").get_by_role("checkbox").check()
    staff.get_by_role("button", name="Restore").click()
    staff.get_by_text("Done: restore on 1 image(s).").wait_for()
    assert anonymous.goto(url).status == 200
    assert anonymous.locator("figcaption").inner_text() == "a green triangle"
    assert [e.action for e in ModerationEvent.objects.order_by("created")] == ["hide", "restore"]
