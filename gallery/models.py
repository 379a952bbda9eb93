"""Images as published things: who may see them, likes, collections, reports, moderation."""

import uuid

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from django.urls import reverse
from django.utils import timezone


class Visibility(models.TextChoices):
    PRIVATE = "private", "Private"
    TEAM = "team", "Team"
    PUBLIC = "public", "Public"


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

    class Meta:
        ordering = ["-created"]
        indexes = [
            GinIndex(fields=["search"], name="image_search"),
            models.Index(fields=["visibility", "hidden", "-created"], name="image_public_new"),
            models.Index(fields=["seed"], name="image_seed"),
        ]

    def __str__(self) -> str:
        return self.prompt[:60]

    def get_absolute_url(self) -> str:
        return reverse("image_detail", args=[self.pk])

    def get_file_url(self) -> str:
        return reverse("image_file", args=[self.pk])


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
    images = models.ManyToManyField(Image, related_name="collections", blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


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

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="moderation_events")
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
        return f"{self.action} {self.image_id} by {self.actor}"
