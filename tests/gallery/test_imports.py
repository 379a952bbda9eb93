"""Importing a PNG made by Studio or AUTOMATIC1111, and refusing what is not safe."""

import io
import struct
import urllib.error
import urllib.request
import zlib
from urllib.parse import parse_qs, urlparse

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.test import Client
from django.urls import reverse
from PIL import Image as PILImage
from PIL import PngImagePlugin

from gallery.models import PngImport
from generation import engine, recipes

from .conftest import recipe_for

pytestmark = pytest.mark.django_db

A1111 = (
    "a cozy cabin in the woods, (snow:1.2)\n"
    "Negative prompt: blurry, lowres\n"
    'Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 3141592653, Size: 64x48, '
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.9.4'
)


def png(size=(64, 48), text: dict | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    PILImage.new("RGB", size, (10, 20, 30)).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def upload(client, data: bytes, name="picture.png", content_type="image/png"):
    return client.post(
        reverse("import_upload"), {"image": SimpleUploadedFile(name, data, content_type)}
    )


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


def test_an_a1111_png_fills_the_recipe(media, as_viewer):
    client = as_viewer("alice")
    response = upload(client, png(text={"parameters": A1111}))
    imported = PngImport.objects.get()
    assert response.status_code == 302 and response["Location"] == imported.get_absolute_url()
    page = client.get(response["Location"])
    recipe = page.context["recipe"]
    assert recipe["prompt"] == "a cozy cabin in the woods, (snow:1.2)"
    assert recipe["negative_prompt"] == "blurry, lowres"
    assert (recipe["steps"], recipe["sampler"], recipe["guidance_scale"]) == (
        28, "DPM++ 2M Karras", 6.5)
    assert (recipe["seed"], recipe["width"], recipe["height"]) == (3141592653, 64, 48)
    assert recipe["model"] == {"name": "v1-5-pruned-emaonly", "hash": "6ce0161689"}
    html = page.content.decode()
    assert "a cozy cabin in the woods, (snow:1.2)" in html and "3141592653" in html
    remix = urlparse(page.context["remix_url"])
    initial = recipes.form_initial({k: v[0] for k, v in parse_qs(remix.query).items()})
    assert (initial["prompt"], initial["negative_prompt"]) == (recipe["prompt"], "blurry, lowres")
    assert (initial["seed"], initial["steps"], initial["sampler"]) == (
        "3141592653", "28", "DPM++ 2M Karras")


def test_a_studio_png_brings_its_whole_recipe(media, as_viewer):
    recipe = engine.Recipe.from_json(recipe_for("red circle", seed=11, batch_size=2,
                                                batch_index=1))
    data = engine.png_with_recipe(PILImage.new("RGB", (8, 8)), recipe)
    client = as_viewer("alice")
    page = client.get(upload(client, data)["Location"])
    assert page.context["recipe"] == recipe.to_json()
    assert 'id="seed">12<' in page.content.decode()  # the image's own seed: 11 + 1


def test_a_jpeg_with_a1111_exif_parameters_is_read(media, as_viewer):
    exif = PILImage.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + A1111.encode("utf-16-be")
    buffer = io.BytesIO()
    PILImage.new("RGB", (64, 48)).save(buffer, "JPEG", exif=exif)
    client = as_viewer("alice")
    page = client.get(upload(client, buffer.getvalue(), "x.jpg", "image/jpeg")["Location"])
    assert page.context["recipe"]["seed"] == 3141592653


def test_the_stored_name_never_comes_from_the_upload(media, as_viewer):
    upload(as_viewer("alice"), png(), name="../../../etc/evil.png")
    imported = PngImport.objects.get()
    assert imported.file.name == f"imports/{imported.pk}.png"
    assert (media / "imports" / f"{imported.pk}.png").is_file()


def bomb_png(width: int, height: int) -> bytes:
    """A small PNG that claims (and mostly decodes to) a huge grey image."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * min(height, 64), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(5000, 5000), (100_000, 100_000)])
def test_a_decompression_bomb_is_refused(media, as_viewer, size):
    data = bomb_png(*size)
    assert len(data) < 100_000
    response = upload(as_viewer("alice"), data)
    assert response.status_code == 400
    assert "pixels" in response.content.decode()
    assert not PngImport.objects.exists() and not (media / "imports").exists()


def test_a_bomb_in_a_text_chunk_is_refused(media, as_viewer):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "x" * 20_000_000, zip=True)  # 20 MB from a few KB
    buffer = io.BytesIO()
    PILImage.new("RGB", (8, 8)).save(buffer, "PNG", pnginfo=info)
    response = upload(as_viewer("alice"), buffer.getvalue())
    assert response.status_code == 400 and not PngImport.objects.exists()


@pytest.mark.parametrize("data,message", [
    (b"GIF89a" + b"\0" * 64, "Only PNG, JPEG and WebP"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "Only PNG, JPEG and WebP"),
    (png()[:60], "damaged"),
])
def test_only_complete_png_jpeg_and_webp_are_accepted(media, as_viewer, data, message):
    response = upload(as_viewer("alice"), data)
    assert response.status_code == 400 and message in response.content.decode()


def test_a_file_over_the_size_limit_is_refused(media, settings, as_viewer):
    settings.STUDIO_IMPORT_MAX_BYTES = 1000
    response = upload(as_viewer("alice"), png(size=(300, 300)) + b"\0" * 1000)
    assert response.status_code == 413 and "larger than" in response.content.decode()


def test_an_image_without_metadata_is_kept_but_offers_nothing(media, as_viewer):
    client = as_viewer("alice")
    page = client.get(upload(client, png())["Location"]).content.decode()
    assert "carries no recipe" in page and "Reproduce and verify" not in page


@pytest.mark.parametrize("viewer,status", [("alice", 200), ("admin", 200), ("bob", 404),
                                           ("carol", 404)])
def test_an_import_is_private_to_its_owner(media, as_viewer, viewer, status):
    upload(as_viewer("alice"), png(text={"parameters": A1111}))
    imported = PngImport.objects.get()
    client = as_viewer(viewer)
    assert client.get(imported.get_absolute_url()).status_code == status
    assert client.get(imported.get_file_url()).status_code == status


def test_uploading_needs_a_login(as_viewer):
    response = as_viewer("anonymous").get(reverse("import_upload"))
    assert response.status_code == 302


# --- Streamed with a cap, and a cap per person --------------------------------------------

RECEIVED: list[int] = []  # bytes the storing handlers got, by Recorder


class Recorder(FileUploadHandler):
    """An upload handler in front of Django's own that stores nothing: it counts the bytes that
    reach the handlers that would store them."""

    def receive_data_chunk(self, raw_data, start):
        RECEIVED.append(len(raw_data))
        return raw_data

    def file_complete(self, file_size):
        return None


def test_an_upload_over_the_cap_stops_being_read_and_nothing_is_stored(media, settings,
                                                                      as_viewer):
    settings.STUDIO_IMPORT_MAX_BYTES = 100_000
    settings.FILE_UPLOAD_HANDLERS = ["tests.gallery.test_imports.Recorder",
                                     *settings.FILE_UPLOAD_HANDLERS]
    RECEIVED.clear()
    response = upload(as_viewer("alice"), png() + b"\0" * 2_000_000)
    assert response.status_code == 413
    assert "The image file is larger than" in response.content.decode()
    assert sum(RECEIVED) <= 100_000  # not the whole 2 MB, as Django alone would store it
    assert not PngImport.objects.exists() and not any(media.iterdir())


def multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, str]:
    boundary = "studio-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
             .encode() for name, value in fields.items()]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
              f'filename="x.png"\r\nContent-Type: image/png\r\n\r\n'.encode() + data + b"\r\n"
              for name, data in files.items()]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), boundary


def test_the_live_server_answers_an_upload_over_the_cap_with_413(studio_server, alice, client,
                                                                settings, tmp_path):
    settings.MEDIA_ROOT, settings.STUDIO_IMPORT_MAX_BYTES = tmp_path, 100_000
    client.force_login(alice)
    token = "a" * 32  # a CSRF secret of our own, sent as cookie and form field alike
    body, boundary = multipart({"csrfmiddlewaretoken": token},
                               {"image": png() + b"\0" * 3_000_000})
    request = urllib.request.Request(
        studio_server.url + reverse("import_upload"), data=body, method="POST", headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Cookie": f"sessionid={client.cookies['sessionid'].value}; csrftoken={token}",
        })
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)  # noqa: S310
    assert refused.value.code == 413
    assert "The image file is larger than" in refused.value.read().decode()
    assert not PngImport.objects.exists() and not any(tmp_path.iterdir())


def test_the_upload_form_still_needs_its_csrf_token(media, alice):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    response = browser.post(reverse("import_upload"),
                            {"image": SimpleUploadedFile("x.png", png(), "image/png")})
    assert response.status_code == 403 and not PngImport.objects.exists()
    browser.get(reverse("import_upload"))
    token = browser.cookies["csrftoken"].value
    response = browser.post(reverse("import_upload"), {
        "csrfmiddlewaretoken": token, "image": SimpleUploadedFile("x.png", png(), "image/png")})
    assert response.status_code == 302 and PngImport.objects.count() == 1


def test_each_person_keeps_at_most_the_import_cap(media, settings, as_viewer):
    settings.STUDIO_IMPORT_MAX_BYTES, settings.STUDIO_MAX_IMPORTS_PER_USER = 2**20, 2
    client = as_viewer("alice")
    assert [upload(client, png()).status_code for _ in range(2)] == [302, 302]
    refused = upload(client, png())
    assert refused.status_code == 400 and "2 imported files" in refused.content.decode()
    assert PngImport.objects.count() == 2 and len(list((media / "imports").iterdir())) == 2
    assert upload(as_viewer("bob"), png()).status_code == 302  # a cap per person
