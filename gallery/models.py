"""Images as published things: who may see them, likes, collections, reports, moderation."""

import uuid

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone


class Visibility(models.TextChoices):
    PRIVATE = "private", "Private"
    TEAM = "team", "Team"
    PUBLIC = "public", "Public"


class SharedQuerySet(models.QuerySet):
    """Who may see a shared thing: everyone what is public, a team's members what is shared
    with the team, its owner everything of theirs, staff everything. Images and collections
    follow this one rule; `shown` is what else a thing must be for anyone but its owner and
    staff to see it."""

    shown = Q()

    @classmethod
    def _shared(cls, visibility: str, **where) -> Q:
        return Q(visibility=visibility, **where) & cls.shown

    def public(self) -> "SharedQuerySet":
        """What the public gallery shows, to anyone, signed in or not."""
        return self.filter(self._shared(Visibility.PUBLIC))

    def visible_to(self, user) -> "SharedQuerySet":
        if getattr(user, "is_staff", False):
            return self
        if not getattr(user, "is_authenticated", False):
            return self.public()
        # The user's teams as a subquery, not a join: a join needs DISTINCT, and DISTINCT
        # makes Postgres read every visible row before it can return a listing's first page.
        team = self._shared(Visibility.TEAM, team__in=user.memberships.values("team_id"))
        return self.filter(self._shared(Visibility.PUBLIC) | team | Q(owner=user))


class ImageQuerySet(SharedQuerySet):
    # Moderators hide images (not collections): a hidden one is its owner's and staff's alone.
    shown = Q(hidden=False)


class Image(models.Model):
    """A gallery entry for one generated output. Private until its owner says otherwise.

    It shares its output's UUID, so generation can link to an image's page and file by the
    output's id without importing the gallery."""

    output = models.OneToOneField(
        "generation.Output", primary_key=True, on_delete=models.CASCADE,
        related_name="gallery_image",
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="images"
    )
    visibility = models.CharField(
        max_length=10, choices=Visibility.choices, default=Visibility.PRIVATE
    )
    team = models.ForeignKey(
        "studio.Team", null=True, blank=True, on_delete=models.SET_NULL, related_name="images"
    )
    # Copied from the recipe for filtering and full-text search without reading JSON.
    prompt = models.TextField()
    model_name = models.CharField(max_length=200)
    sampler = models.CharField(max_length=60)
    seed = models.BigIntegerField()
    search = SearchVectorField(null=True, editable=False)
    hidden = models.BooleanField(default=False)
    hidden_reason = models.TextField(blank=True)
    like_count = models.PositiveIntegerField(default=0)
    created = models.DateTimeField(default=timezone.now)

    objects = ImageQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]
        # One index per listing, in its order (gallery.selectors.SORTS, newest first: read
        # backwards) after its equality filters, so a page of any depth is a short index range
        # (docs/performance.md, "The gallery at 100,000 images").
        indexes = [
            GinIndex(fields=["search"], name="image_search"),
            models.Index(fields=["visibility", "hidden", "created", "output"], name="image_new"),
            models.Index(fields=["visibility", "hidden", "like_count", "created", "output"],
                         name="image_liked"),
            models.Index(fields=["owner", "created", "output"], name="image_owner_new"),
            # Not by `hidden`: a team's owner and staff see its hidden images there too.
            models.Index(fields=["team", "visibility", "created", "output"],
                         name="image_team_listing"),
            models.Index(fields=["seed"], name="image_seed"),
        ]

    def __str__(self) -> str:
        return self.prompt[:60]

    def get_absolute_url(self) -> str:
        return reverse("image_detail", args=[self.pk])

    def get_file_url(self) -> str:
        return reverse("image_file", args=[self.pk])

    @property
    def is_public(self) -> bool:
        """In the public gallery: what `Image.objects.public()` selects."""
        return self.visibility == Visibility.PUBLIC and not self.hidden


class Like(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="likes"
    )
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="likes")
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "image"], name="one_like_per_user")]

    def __str__(self) -> str:
        return f"{self.user} likes {self.image_id}"


class Collection(models.Model):
    """A named set of images, with a visibility of its own."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="collections"
    )
    name = models.CharField(max_length=100)
    visibility = models.CharField(
        max_length=10, choices=Visibility.choices, default=Visibility.PRIVATE
    )
    team = models.ForeignKey(
        "studio.Team", null=True, blank=True, on_delete=models.SET_NULL, related_name="collections"
    )
    images = models.ManyToManyField(Image, related_name="collections", blank=True,
                                    through="CollectionItem")
    created = models.DateTimeField(default=timezone.now)

    objects = SharedQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("collection_detail", args=[self.pk])


class CollectionItem(models.Model):
    """An image in a collection, with the image's own date beside it: a collection lists its
    images newest first, and with the date here one index range in that order is a page
    (gallery.selectors.listing_window), however large the collection."""

    collection = models.ForeignKey(Collection, on_delete=models.CASCADE,
                                   related_name="items")
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="collection_items")
    created = models.DateTimeField()  # the image's; it never changes

    class Meta:
        db_table = "gallery_collection_images"  # the many-to-many table it was made from
        unique_together = [("collection", "image")]
        indexes = [models.Index(fields=["collection", "created", "image"],
                                name="collection_item_new")]

    def __str__(self) -> str:
        return f"{self.image_id} in {self.collection_id}"

    @classmethod
    def collect(cls, collection: Collection, images) -> None:
        """Put the images in the collection, each once, with its date."""
        cls.objects.bulk_create(
            [cls(collection=collection, image=image, created=image.created) for image in images],
            ignore_conflicts=True,
        )


class Report(models.Model):
    class Status(models.TextChoices):
        OPEN = "open", "Open"
        ACTIONED = "actioned", "Hidden"
        DISMISSED = "dismissed", "Dismissed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="reports")
    reporter = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="reports"
    )
    reason = models.TextField(max_length=1000)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"report on {self.image_id}: {self.reason[:40]}"


class ModerationEvent(models.Model):
    """The audit log: every moderation action, who took it and why. Never edited."""

    class Action(models.TextChoices):
        HIDE = "hide", "Hide"
        RESTORE = "restore", "Restore"
        DISMISS = "dismiss", "Dismiss reports"

    # The log outlives the image: its owner may delete it later, the record of what was done
    # stays, with the image's id.
    image = models.ForeignKey(
        Image, null=True, on_delete=models.SET_NULL, related_name="moderation_events"
    )
    image_uuid = models.UUIDField(editable=False, null=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
        related_name="moderation_events",
    )
    action = models.CharField(max_length=10, choices=Action.choices)
    reason = models.TextField(blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.action} {self.image_uuid} by {self.actor}"

    def save(self, *args, **kwargs):
        if self.image_uuid is None:
            self.image_uuid = self.image_id
        super().save(*args, **kwargs)


def import_path(instance: "PngImport", filename: str) -> str:
    # Built from our own UUID and the format Pillow detected, never from the upload's name.
    return f"imports/{instance.pk}.{instance.extension}"


class PngImport(models.Model):
    """An uploaded image made by Studio or AUTOMATIC1111, kept with the recipe read from it.
    Private to the person who uploaded it (and staff)."""

    EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="png_imports"
    )
    file = models.FileField(upload_to=import_path, max_length=200)
    format = models.CharField(max_length=10)  # as Pillow detected it: PNG, JPEG or WEBP
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    # The Studio recipe JSON when the file carried one; else None.
    recipe = models.JSONField(null=True, blank=True)
    # The AUTOMATIC1111 ``parameters`` text, and its fields as engine.parse_parameters reads them.
    parameters = models.TextField(blank=True)
    fields = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"import {self.pk}"

    def get_absolute_url(self) -> str:
        return reverse("import_detail", args=[self.pk])

    def get_file_url(self) -> str:
        return reverse("import_file", args=[self.pk])

    @property
    def extension(self) -> str:
        return self.EXTENSIONS[self.format]

    @property
    def content_type(self) -> str:
        return "image/jpeg" if self.format == "JPEG" else f"image/{self.format.lower()}"


class Reproduction(models.Model):
    """A re-run of a recipe and how close its pixels came to the original's.

    The original is a gallery image or an imported file (exactly one); the verdict stays
    empty until the job succeeds and the images are compared."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.OneToOneField(
        "generation.Job", on_delete=models.CASCADE, related_name="reproduction"
    )
    image = models.ForeignKey(
        Image, null=True, blank=True, on_delete=models.CASCADE, related_name="reproductions"
    )
    imported = models.ForeignKey(
        PngImport, null=True, blank=True, on_delete=models.CASCADE, related_name="reproductions"
    )
    # Which image of the re-run batch to compare: the original's place in its own batch.
    batch_index = models.PositiveSmallIntegerField(default=0)
    verdict = models.CharField(max_length=20, blank=True)
    max_diff = models.PositiveSmallIntegerField(null=True, blank=True)
    psnr = models.FloatField(null=True, blank=True)  # None when identical: infinite
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(image__isnull=False, imported__isnull=True)
                | models.Q(image__isnull=True, imported__isnull=False),
                name="reproduction_has_one_original",
            )
        ]

    def __str__(self) -> str:
        return f"reproduction {self.pk}: {self.verdict or 'pending'}"

    @property
    def output(self):
        """The re-run's image to compare: the one at the original's place in the batch."""
        return self.job.outputs.filter(index=self.batch_index).first()

    @property
    def original_file(self):
        return self.image.output.image if self.image_id else self.imported.file

    @property
    def result_text(self) -> str:
        """The verdict as the pages show it, e.g. "differs: largest pixel difference 3, …"."""
        if self.verdict == "differs":
            psnr = "∞" if self.psnr is None else f"{self.psnr:.1f}"
            return f"differs: largest pixel difference {self.max_diff}, PSNR {psnr} dB"
        return self.verdict
