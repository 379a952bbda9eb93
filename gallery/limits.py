"""What one user may send and keep: uploads read with a cap, and per-user counts.

Both limits hold under concurrency and before anything is stored: an upload stops being read
once it passes its cap, and a count is taken with the user's row locked, so two requests of
one user cannot both see room for one more.
"""

from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat

from studio.services import user_lock

from .services import GalleryError


class LimitReached(GalleryError):
    """A per-user cap is reached; the message says which and what to do."""


def clean_text(value: str, *, field: str, max_chars: int) -> str:
    """`value` stripped, or GalleryError naming `field` when it is too long or holds a NUL
    character (Postgres text cannot hold one). Checked before anything else reads it."""
    value = value.strip()
    if len(value) > max_chars:
        raise GalleryError(f"The {field} is longer than {max_chars:,} characters.")
    if "\x00" in value:
        raise GalleryError(f"The {field} holds a NUL character; remove it.")
    return value


def check_cap(*, user, owned: QuerySet, cap: int, message: str) -> None:
    """Refuse with `message` when `user` already has `cap` rows of `owned`.

    Call it inside the transaction that inserts the new row: the user's row stays locked until
    that transaction ends, so concurrent requests of one user count one after the other."""
    user_lock(user)
    if owned.count() >= cap:
        raise LimitReached(message)


class UploadTooLarge(Exception):
    """A file in the request passed the cap; the message names its form field."""

    def __init__(self, field: str, max_bytes: int):
        self.field = field
        super().__init__(f"The {field} file is larger than {filesizeformat(max_bytes)}.")


class CappedUploadHandler(FileUploadHandler):
    """First of a request's upload handlers: it passes each chunk on to the ones that store it
    (memory or a temporary file) until the request's files together pass `max_bytes`, then
    stops reading them, so at most `max_bytes` of files is ever stored.

    The rest of the body is still read and dropped (not a connection reset), so the client
    gets the refusal instead of a broken connection."""

    def __init__(self, request: HttpRequest, *, max_bytes: int):
        super().__init__(request)
        self.max_bytes = max_bytes
        self.received = 0
        self.too_large: str | None = None  # the form field of the file that passed the cap

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.received > self.max_bytes:
            self.too_large = self.field_name
            raise StopUpload(connection_reset=False)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None  # the handlers after this one make the file

    def check(self) -> None:
        """Raise UploadTooLarge if the request's files passed the cap (read request.FILES
        first: the body is parsed only then)."""
        if self.too_large is not None:
            raise UploadTooLarge(self.too_large, self.max_bytes)


def cap_uploads(request: HttpRequest, *, max_bytes: int) -> CappedUploadHandler:
    """Put a CappedUploadHandler in front of `request`'s upload handlers.

    Only before anything reads request.POST or request.FILES, so the view that calls this
    must be csrf_exempt and check CSRF itself after (Django's documented pattern for
    changing upload handlers in a view)."""
    handler = CappedUploadHandler(request, max_bytes=max_bytes)
    request.upload_handlers.insert(0, handler)
    return handler
