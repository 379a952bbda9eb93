"""Where media files live (settings.STORAGES["default"]): generated images, image-to-image
inputs and imports, all through Django's storage API.

`STUDIO_MEDIA_STORAGE=local` (the default) keeps them under MEDIA_ROOT on this machine's disk;
`s3` keeps them in an S3-compatible bucket (django-storages' S3Storage over boto3), so a worker
on another host stores images the web server can serve: no shared disk. The bucket and its
credentials are the operator's: Studio never creates a bucket.

The S3 store is configured with django-storages' own names, read from the environment:
AWS_STORAGE_BUCKET_NAME (required), AWS_S3_ENDPOINT_URL (any S3-compatible server; empty for
AWS itself), AWS_S3_REGION_NAME, AWS_S3_ADDRESSING_STYLE, AWS_LOCATION (a key prefix within
the bucket). Credentials are not copied into settings: django-storages and boto3 read
AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile, or an instance role) themselves.

Files are streamed to the browser through the views that check who may see them
(gallery/views.py, gallery/api.py, gallery/import_views.py: a FileResponse over storage.open),
never redirected to the store, so there stays one door: the store may sit on a network browsers
cannot reach, a presigned URL would keep working after its image turned private or was deleted
and could be passed on, and the images are small, so relaying them costs the web server little.

Either store overwrites a file saved again under the same name. Every name Studio saves is
deterministic (generation/models.py, gallery/models.py), so a job retried after a lost worker,
or a finish tried again on a new connection (generation/runner.py), writes over its own files
and the job still ends with exactly one set.
"""

from collections.abc import Mapping
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

CHOICES = ("local", "s3")
ADDRESSING_STYLES = ("auto", "path", "virtual")

# A store that does not answer is reported in seconds, not after botocore's default 60 s read
# timeout and up to 5 tries: the web server's request (and /healthz) gets an error instead of
# hanging. Images are small, so a store that is merely slow still fits in these.
CONNECT_TIMEOUT = 3  # seconds
READ_TIMEOUT = 10  # seconds of silence while waiting for an answer
# botocore's own default: workers write through this client too, and a job that fails to
# store its images is not retried, so a store's passing hiccup (SlowDown, a restart) gets
# two more tries. /healthz does not wait for them: it has a deadline of its own.
ATTEMPTS = 3


def media_storage(kind: str, env: Mapping[str, str]) -> dict:
    """STORAGES["default"] for STUDIO_MEDIA_STORAGE `kind`, configured from `env`."""
    if kind == "local":
        # Django's default refuses to overwrite and saves a second file under a random
        # suffix instead: a retried job would then leave two sets (see the module's doc).
        return {"BACKEND": "django.core.files.storage.FileSystemStorage",
                "OPTIONS": {"allow_overwrite": True}}
    if kind == "s3":
        return {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": s3_options(env)}
    raise ImproperlyConfigured(
        f"STUDIO_MEDIA_STORAGE must be one of {', '.join(CHOICES)}, not {kind!r}")


def s3_options(env: Mapping[str, str]) -> dict:
    """S3Storage's options from the environment, refused with the reason if incomplete."""
    from botocore.config import Config

    bucket = envstr("AWS_STORAGE_BUCKET_NAME", env)
    if not bucket:
        raise ImproperlyConfigured(
            "STUDIO_MEDIA_STORAGE=s3 needs AWS_STORAGE_BUCKET_NAME: the name of an existing "
            "bucket to keep images in (Studio does not create it).")
    endpoint = envstr("AWS_S3_ENDPOINT_URL", env) or None
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ImproperlyConfigured(
                f"AWS_S3_ENDPOINT_URL must be an http:// or https:// URL, not {endpoint!r}")
    style = envstr("AWS_S3_ADDRESSING_STYLE", env) or default_addressing(endpoint)
    if style not in ADDRESSING_STYLES:
        raise ImproperlyConfigured(
            f"AWS_S3_ADDRESSING_STYLE must be one of {', '.join(ADDRESSING_STYLES)}, "
            f"not {style!r}")
    return {
        "bucket_name": bucket,
        "endpoint_url": endpoint,
        "region_name": envstr("AWS_S3_REGION_NAME", env) or None,
        "location": envstr("AWS_LOCATION", env).strip("/"),
        # A client config of our own replaces django-storages' (and with it its
        # AWS_S3_ADDRESSING_STYLE setting), so the style goes in here.
        "client_config": Config(
            s3={"addressing_style": style},
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            retries={"mode": "standard", "total_max_attempts": ATTEMPTS},
        ),
        "file_overwrite": True,
        # Objects stay private, whatever the bucket's policy allows: no ACL is sent, and no
        # URL is signed, since every file is streamed through the view that checks who may
        # see it (gallery/views.py); a signed URL from `.url()` would be a side door.
        "default_acl": None,
        "querystring_auth": False,
    }


def envstr(name: str, env: Mapping[str, str]) -> str:
    return env.get(name, "").strip()


def default_addressing(endpoint: str | None) -> str:
    """Path-style (`host/bucket/key`) for a store at an endpoint of its own; botocore's own
    choice (virtual-hosted, `bucket.s3.region.amazonaws.com`) for AWS.

    A virtual-hosted name needs a DNS entry per bucket, which a store on an IP address,
    `localhost` or a compose service name (`minio`) cannot have and most self-hosted stores
    (MinIO, Ceph, Garage) leave unset, while every S3-compatible store answers path-style.
    AWS_S3_ADDRESSING_STYLE=virtual is there for a store that wants virtual-hosted names."""
    return "auto" if endpoint is None else "path"
