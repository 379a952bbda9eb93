"""A file on disk goes with its row, however the row goes, once the deletion has committed.

Real commits (transaction=True): the files must go when the deletion commits, and only then.
"""

from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.db import transaction
from django.urls import reverse

from gallery import imports
from gallery import services as gallery_services
from gallery.models import Image, PngImport
from generation.models import Job, Output
from studio import services
from studio.login_throttle import login_throttle_clear
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    login_throttle_clear(username="alice")
    return tmp_path


def outputs_of(owner, count=2) -> list[Output]:
    job = Job.objects.create(owner=owner, recipe={"prompt": "a circle"}, status="succeeded")
    outputs = [
        Output.objects.create(job=job, index=i, image=ContentFile(b"png", name=f"{i}.png"),
                              recipe={}, width=8, height=8)
        for i in range(count)
    ]
    for output in outputs:
        Image.objects.create(output=output, owner=owner, prompt="a circle", seed=7)
    return outputs


def import_of(owner) -> PngImport:
    return PngImport.objects.create(
        owner=owner, file=ContentFile(b"png", name="x.png"), format="PNG", width=8, height=8
    )


def paths(*rows) -> list[Path]:
    return [Path(row.image.path if isinstance(row, Output) else row.file.path) for row in rows]


def test_deleting_an_account_deletes_its_images_and_imports_from_disk(client, alice, bob):
    mine = paths(*outputs_of(alice), import_of(alice))
    theirs = paths(*outputs_of(bob, count=1), import_of(bob))
    assert all(path.exists() for path in mine + theirs)
    client.force_login(alice)
    response = client.post(reverse("account_delete"), {"password": PASSWORD})
    assert response.status_code == 302
    assert not get_user_model().objects.filter(username="alice").exists()
    assert not any(path.exists() for path in mine)
    assert all(path.exists() for path in theirs)


def test_a_deletion_rolled_back_keeps_every_file(alice):
    mine = paths(*outputs_of(alice), import_of(alice))
    with pytest.raises(RuntimeError), transaction.atomic():
        services.account_delete(user=alice)
        raise RuntimeError("something later in the same transaction failed")
    assert get_user_model().objects.filter(username="alice").exists()
    assert all(path.exists() for path in mine)


def test_a_wrong_password_deletes_nothing(client, alice):
    mine = paths(*outputs_of(alice), import_of(alice))
    client.force_login(alice)
    assert client.post(reverse("account_delete"), {"password": "wrong"}).status_code == 200
    assert all(path.exists() for path in mine)
    login_throttle_clear(username="alice")


def test_image_and_import_delete_still_delete_their_files_even_if_already_gone(alice):
    output, sibling = outputs_of(alice)
    imported = import_of(alice)
    image_path, sibling_path, import_path = paths(output, sibling, imported)
    image_path.unlink()  # deleting a file that is already gone is harmless
    gallery_services.image_delete(image=output.gallery_image, actor=alice)
    imports.import_delete(imported=imported, actor=alice)
    assert not Output.objects.filter(pk=output.pk).exists()
    assert not PngImport.objects.exists()
    assert not import_path.exists()
    assert sibling_path.exists()
