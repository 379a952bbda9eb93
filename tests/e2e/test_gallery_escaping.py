"""A prompt holding HTML and script is shown as text on every gallery page and in the admin:
in Chromium, no script from it runs and no dialog opens."""

import pytest
from django.urls import reverse

from gallery import collections
from gallery.models import Report, Visibility
from tests.e2e.conftest import signed_in
from tests.gallery.conftest import make_image  # noqa: F401  (a fixture)

pytestmark = pytest.mark.e2e

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)><b>bold</b>'


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def test_no_script_from_a_prompt_runs_anywhere(
    studio_server, browser, make_image, alice, carol, admin  # noqa: F811
):
    image = make_image(alice, Visibility.PUBLIC, prompt=EVIL)
    Report.objects.create(image=image, reporter=carol, reason=EVIL)
    shelf = collections.collection_create(owner=alice, name=EVIL, visibility="public")
    collections.collection_add_image(collection=shelf, actor=alice, image=image)
    visits = {
        alice: [image.get_absolute_url(), reverse("gallery_mine"), shelf.get_absolute_url(),
                reverse("collection_list")],
        carol: [image.get_absolute_url(), reverse("gallery_public") + "?q=bold"],
        admin: [reverse("review_queue"), reverse("admin:gallery_image_changelist"),
                reverse("admin:gallery_image_change", args=[image.pk]),
                reverse("admin:gallery_collection_changelist")],
    }
    dialogs = []
    for user, urls in visits.items():
        context = signed_in(browser, studio_server, user)
        page = context.new_page()
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        for url in urls:
            response = page.goto(studio_server.url + url)
            assert response.status == 200, url
            page.wait_for_timeout(200)  # an injected onerror would fire by now
            assert page.locator("b", has_text="bold").count() == 0, url
            assert page.get_by_text('<script>alert("x")</script>', exact=False).count() >= 1, url
        context.close()
    assert dialogs == []
