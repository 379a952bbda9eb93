"""Media in an S3-compatible store (studio/media_storage.py), against a real S3 server on
loopback (moto's, tests/s3_server.py): a real worker stores its images there and nothing on
its disk, the real views stream them (and inputs and imports) only to whoever may see them,
deleting an image deletes its object; and the settings refuse an incomplete configuration,
honour the addressing style, and make the local disk overwrite as the store does."""

import base64
import io
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from botocore.awsrequest import AWSResponse
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image as PILImage
from storages.backends.s3 import S3Storage

from gallery import imports
from gallery import services as gallery_services
from gallery.models import Image
from generation import recipes, services
from generation.job_request import parse
from studio.media_storage import media_storage, s3_options
from studio.services import token_create
from tests.conftest import ROOT, Worker, job_finished

STEPS = 4


def png(size=(32, 32), color=(200, 30, 30), mode="RGB") -> bytes:
    out = io.BytesIO()
    PILImage.new(mode, size, color if mode == "RGB" else 255).save(out, "PNG")
    return out.getvalue()


def get(url: str, **headers) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, b""


def files_in(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


def cookie(user) -> str:
    """A session cookie of the user's own (logging another in on one client would end it)."""
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


# --- With a real worker and a live server -------------------------------------------------


def test_a_workers_images_and_inputs_are_stored_in_the_bucket_and_served_only_to_viewers(
    s3_media, studio_server, alice, carol, tiny, tmp_path, settings
):
    worker_media = tmp_path / "worker-media"
    worker = Worker(env={**s3_media.env, "MEDIA_ROOT": str(worker_media),
                         "STUDIO_MODELS": f"{tiny}={settings.STUDIO_MODELS[tiny]}"})
    worker.start()
    try:
        text = services.job_submit(user=alice, recipe=recipes.recipe_from_params(
            {"prompt": "red circle", "model": tiny, "steps": STEPS, "seed": 1,
             "width": 32, "height": 32}))
        # Its input and mask are written by this process (the web tier) and read back by the
        # worker, both through the store.
        mask = png(mode="L")
        img2img = recipes.submit(user=alice, request=parse(
            {"prompt": "red circle", "model": tiny, "steps": STEPS, "seed": 2,
             "init_image": base64.b64encode(png()).decode(),
             "mask": base64.b64encode(mask).decode()}))
        jobs = [job_finished(text), job_finished(img2img)]
    finally:
        worker.stop()
    assert [job.status for job in jobs] == ["succeeded"] * 2, [job.error for job in jobs]

    images = [Image.objects.get(output__job=job) for job in jobs]
    inputs = {item.kind: item for item in img2img.inputs.all()}
    assert s3_media.objects() == sorted(
        [f"outputs/{job.pk}/0.png" for job in jobs]
        + [f"inputs/{alice.pk}/{item.sha256}.png" for item in inputs.values()])
    assert files_in(worker_media) == [] and files_in(s3_media.media_root) == []
    grants = s3_media.server.client().get_object_acl(
        Bucket=s3_media.bucket, Key=f"outputs/{text.pk}/0.png")["Grants"]
    assert [grant["Grantee"]["Type"] for grant in grants] == ["CanonicalUser"]  # the owner's

    url, alices, carols = studio_server.url, cookie(alice), cookie(carol)
    token = token_create(user=alice, name="t")[1]
    for image in images:
        stored = s3_media.read(image.output.image.name)
        assert stored.startswith(b"\x89PNG")
        assert get(f"{url}/images/{image.pk}.png", Cookie=alices) == (200, stored)
        assert get(f"{url}/api/v1/images/{image.pk}/file",
                   Authorization=f"Bearer {token}") == (200, stored)
        assert get(f"{url}/images/{image.pk}.png", Cookie=carols)[0] == 404
        assert get(f"{url}/api/v1/images/{image.pk}/file")[0] in (401, 404)
    for kind, name in (("image", "input"), ("mask", "mask")):
        stored = s3_media.read(inputs[kind].file.name)
        assert get(f"{url}/images/{images[1].pk}/{name}.png", Cookie=alices) == (200, stored)
        assert get(f"{url}/images/{images[1].pk}/{name}.png", Cookie=carols)[0] == 404

    gallery_services.image_delete(image=images[0], actor=alice)
    assert f"outputs/{text.pk}/0.png" not in s3_media.objects()
    assert get(f"{url}/images/{images[0].pk}.png", Cookie=alices)[0] == 404
    assert f"outputs/{img2img.pk}/0.png" in s3_media.objects()


def test_an_import_is_stored_in_the_bucket_and_served_to_its_owner_alone(
    s3_media, studio_server, alice, carol
):
    data = png(color=(10, 200, 30))
    imported = imports.import_create(
        owner=alice, upload=SimpleUploadedFile("mine.png", data, content_type="image/png"))
    assert s3_media.objects(f"imports/{imported.pk}") == [f"imports/{imported.pk}.png"]
    assert s3_media.read(f"imports/{imported.pk}.png") == data
    assert files_in(s3_media.media_root) == []
    page = f"{studio_server.url}/import/{imported.pk}/file"
    assert get(page, Cookie=cookie(alice)) == (200, data)
    assert get(page, Cookie=cookie(carol))[0] == 404
    imports.import_delete(imported=imported, actor=alice)
    assert s3_media.objects(f"imports/{imported.pk}") == []


def test_the_store_overwrites_a_file_saved_again_under_its_name(s3_media):
    """A retried job writes its images under the same names: they replace the first try's."""
    first = default_storage.save("outputs/retried/0.png", ContentFile(b"first try"))
    second = default_storage.save("outputs/retried/0.png", ContentFile(b"second try"))
    assert first == second == "outputs/retried/0.png"
    assert s3_media.objects("outputs/retried/") == ["outputs/retried/0.png"]
    assert s3_media.read("outputs/retried/0.png") == b"second try"
    default_storage.delete(first)


def sent_urls(storage: S3Storage, *, answer: bool) -> list[str]:
    """The URLs the storage's client sends its requests to, from now on; with `answer`,
    each is answered here (an empty 200) instead of being sent."""

    class Empty:
        def stream(self, **kwargs):
            return iter([b""])

    urls = []

    def seen(request, **kwargs):
        urls.append(request.url)
        return AWSResponse(request.url, 200, {}, Empty()) if answer else None

    storage.connection.meta.client.meta.events.register("before-send.s3", seen)
    return urls


def test_path_style_addressing_reaches_the_real_server(s3_server):
    env = {**s3_server.env("studio-test"), "AWS_S3_ADDRESSING_STYLE": "path"}
    storage = S3Storage(**s3_options(env), access_key=env["AWS_ACCESS_KEY_ID"],
                        secret_key=env["AWS_SECRET_ACCESS_KEY"])
    urls = sent_urls(storage, answer=False)
    name = storage.save("addressing/path.txt", ContentFile(b"by path"))
    assert storage.open(name).read() == b"by path"
    storage.delete(name)
    assert urls and all(u.startswith(f"{s3_server.url}/studio-test/addressing/") for u in urls)


# --- Settings -----------------------------------------------------------------------------


def storage_for(**env) -> S3Storage:
    env = {"AWS_STORAGE_BUCKET_NAME": "studio-media", **env}
    return S3Storage(**s3_options(env), access_key="key", secret_key="secret")


@pytest.mark.parametrize(("endpoint", "style", "url"), [
    ("http://10.0.0.5:9000", "", "http://10.0.0.5:9000/studio-media/"),
    ("http://minio:9000", "", "http://minio:9000/studio-media/"),
    ("https://store.example.com", "", "https://store.example.com/studio-media/"),
    ("https://store.example.com", "virtual", "https://studio-media.store.example.com/"),
    ("https://store.example.com", "path", "https://store.example.com/studio-media/"),
    ("", "", "https://studio-media.s3.eu-west-1.amazonaws.com/"),  # AWS: its own choice
])
def test_the_addressing_style_is_path_at_an_endpoint_unless_set(endpoint, style, url):
    storage = storage_for(AWS_S3_ENDPOINT_URL=endpoint, AWS_S3_ADDRESSING_STYLE=style,
                          AWS_S3_REGION_NAME="eu-west-1")
    urls = sent_urls(storage, answer=True)
    storage.exists("outputs/x/0.png")
    assert urls == [url + "outputs/x/0.png"]


def test_a_key_prefix_keeps_studio_to_its_part_of_a_shared_bucket():
    storage = storage_for(AWS_S3_ENDPOINT_URL="http://10.0.0.5:9000", AWS_LOCATION="/studio/")
    urls = sent_urls(storage, answer=True)
    storage.exists("outputs/x/0.png")
    assert urls == ["http://10.0.0.5:9000/studio-media/studio/outputs/x/0.png"]


def test_the_client_gives_up_on_a_dead_store_within_seconds():
    config = storage_for(AWS_S3_ENDPOINT_URL="http://127.0.0.1:9").client_config
    assert config.connect_timeout <= 5 and config.read_timeout <= 15
    assert config.retries["total_max_attempts"] <= 3


def test_objects_are_private_and_never_linked_past_the_views():
    options = s3_options({"AWS_STORAGE_BUCKET_NAME": "studio-media"})
    assert options["default_acl"] is None and options["querystring_auth"] is False
    assert options["file_overwrite"] is True


@pytest.mark.parametrize(("kind", "env", "message"), [
    ("s3", {}, "STUDIO_MEDIA_STORAGE=s3 needs AWS_STORAGE_BUCKET_NAME"),
    ("s3", {"AWS_STORAGE_BUCKET_NAME": " "}, "needs AWS_STORAGE_BUCKET_NAME"),
    ("s3", {"AWS_STORAGE_BUCKET_NAME": "b", "AWS_S3_ENDPOINT_URL": "minio:9000"},
     "AWS_S3_ENDPOINT_URL must be an http:// or https:// URL"),
    ("s3", {"AWS_STORAGE_BUCKET_NAME": "b", "AWS_S3_ADDRESSING_STYLE": "dns"},
     "AWS_S3_ADDRESSING_STYLE must be one of auto, path, virtual"),
    ("nfs", {}, "STUDIO_MEDIA_STORAGE must be one of local, s3, not 'nfs'"),
])
def test_an_incomplete_configuration_is_refused_naming_what_is_missing(kind, env, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        media_storage(kind, env)


@pytest.mark.parametrize(("env", "message"), [
    ({"STUDIO_MEDIA_STORAGE": "s3"}, "STUDIO_MEDIA_STORAGE=s3 needs AWS_STORAGE_BUCKET_NAME"),
    ({"STUDIO_MEDIA_STORAGE": "S3"}, "STUDIO_MEDIA_STORAGE must be one of local, s3"),
])
def test_studio_refuses_to_start_with_an_incomplete_store(env, message):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT,
                            env={**environ, **env}, capture_output=True, text=True)
    assert result.returncode != 0 and message in result.stderr


def test_the_local_disk_overwrites_a_file_saved_again_under_its_name(settings, tmp_path):
    """As the store does: Django's default would keep both, the second under a new name."""
    settings.MEDIA_ROOT = tmp_path
    first = default_storage.save("outputs/retried/0.png", ContentFile(b"first try"))
    second = default_storage.save("outputs/retried/0.png", ContentFile(b"second try"))
    assert first == second == "outputs/retried/0.png"
    assert [path.name for path in files_in(tmp_path)] == ["0.png"]
    assert (tmp_path / first).read_bytes() == b"second try"

