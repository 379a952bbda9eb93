"""Jobs and their outputs. The database is the source of truth for a job's state
(docs/architecture.md §3)."""

import uuid

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone


class Job(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELED = "canceled", "Canceled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs"
    )
    # The validated recipe of the whole batch: `seed` is the batch's base seed
    # (docs/architecture.md §4).
    recipe = models.JSONField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    attempt = models.PositiveSmallIntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)
    worker = models.CharField(max_length=200, blank=True)
    queued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    # Seconds spent loading, per step and decoding; kept beside the recipe, never in it.
    timings = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    # No longer written: each output keeps its own frames (Output.trajectory), moved there by
    # migration 0005. The column goes in a later release, once no deployed worker writes it.
    trajectory = models.JSONField(default=list, blank=True)
    # The one image of the batch this job keeps and shows, by batch index; None: all of them.
    # A reproduction re-runs the original's whole batch (the pixels depend on it) but may
    # hand out only the original's own image: its siblings can be private to someone else.
    reveals = models.PositiveSmallIntegerField(null=True, blank=True)
    # The image and mask it starts from (img2img, inpainting), which its recipe names by
    # hash; stored once per owner, so jobs that send the same image share it.
    inputs = models.ManyToManyField("InputImage", blank=True, related_name="jobs")
    # Claims that started a job behind this one while it was its owner's turn
    # (STUDIO_AFFINITY_MAX_DEFER, docs/architecture.md §3.3); counted only while that is on.
    deferred = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["-queued_at"]
        indexes = [
            models.Index(fields=["status", "queued_at"], name="job_status_queued"),
            models.Index(fields=["owner", "started_at"], name="job_owner_started"),
            # The fair queue asks, for every queued job, whether its owner has an older one.
            models.Index(fields=["owner", "queued_at"], condition=models.Q(status="queued"),
                         name="job_owner_queued"),
        ]

    def __str__(self) -> str:
        return f"{self.recipe.get('prompt', '')[:40]!r} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    def shows(self, index: int) -> bool:
        """Whether the image at this batch index may leave the worker: stored, previewed,
        kept as trajectory frames."""
        return self.reveals is None or index == self.reveals

    @property
    def heartbeat_age(self) -> int | None:
        """Whole seconds since the worker last reported on this job (the staff page shows it)."""
        if self.heartbeat is None:
            return None
        return int((timezone.now() - self.heartbeat).total_seconds())

    @property
    def group_name(self) -> str:
        """The channel-layer group its progress is broadcast to."""
        return self.group_for(self.pk)

    @staticmethod
    def group_for(pk) -> str:
        return f"job.{pk}"


class StoredRecipe:
    """Typed reads of a recipe as Studio stores it (the JSON of engine.Recipe,
    docs/architecture.md §4), for the web tier, which shows recipes but never runs them and
    so does not import the engine.

    A recipe holds its batch's base seeds; the image at `batch_index` is made from
    seed + batch_index (and, with a variation, subseed + batch_index), as
    engine.Recipe.image_seed numbers them."""

    def __init__(self, data: dict):
        self.data = data

    @property
    def batch_index(self) -> int:
        return self.data.get("batch_index") or 0

    @property
    def image_seed(self) -> int | None:
        """This image's own seed; None when the recipe records no seed (an imported
        AUTOMATIC1111 file may not)."""
        seed = self.data.get("seed")
        return None if seed is None else seed + self.batch_index

    @property
    def image_subseed(self) -> int:
        """This image's own variation seed (used only when `subseed_strength` is above 0)."""
        return (self.data.get("subseed") or 0) + self.batch_index

    @property
    def subseed_strength(self) -> float:
        return self.data.get("subseed_strength") or 0.0


def output_path(output: "Output", filename: str) -> str:
    # Built only from ids we generated, never from user input.
    return f"outputs/{output.job_id}/{output.index}.png"


class Output(models.Model):
    """One finished image of a job's batch, with the recipe that reproduces exactly it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="outputs")
    index = models.PositiveSmallIntegerField()
    image = models.FileField(upload_to=output_path, max_length=200)
    recipe = models.JSONField()
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    # Every k-th step's preview of this image alone, [{"step", "image": data URL}], so its
    # page can replay the denoising without showing the rest of the batch.
    trajectory = models.JSONField(default=list, blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["job", "index"]
        constraints = [
            models.UniqueConstraint(fields=["job", "index"], name="one_output_per_batch_index")
        ]

    def __str__(self) -> str:
        return f"{self.job_id} #{self.index}"

    # The gallery serves the file and the page, behind its visibility check; an output and
    # its gallery image share one UUID.
    def get_image_url(self) -> str:
        return reverse("image_file", args=[self.pk])

    def get_page_url(self) -> str:
        return reverse("image_detail", args=[self.pk])

    @property
    def image_seed(self) -> int:
        """The seed this image was made from (a worker's recipe always records one)."""
        return StoredRecipe(self.recipe).image_seed


def input_path(image: "InputImage", filename: str) -> str:
    # Built only from ids and a hash we computed, never from user input.
    return f"inputs/{image.owner_id}/{image.sha256}.png"


class InputImage(models.Model):
    """An image or mask a job starts from, as the engine made it canonical (an RGB or
    greyscale PNG without metadata: engine.canonical_image, canonical_mask), named by the
    sha256 of those bytes, which recipes record. Private to its owner; whoever may see an
    output made from it may see it too (gallery.views.image_input)."""

    class Kind(models.TextChoices):
        IMAGE = "image", "Image"
        MASK = "mask", "Mask"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="input_images"
    )
    sha256 = models.CharField(max_length=64)
    kind = models.CharField(max_length=5, choices=Kind.choices)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    file = models.FileField(upload_to=input_path, max_length=200)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "sha256"], name="one_input_per_owner_hash")
        ]
        indexes = [models.Index(fields=["sha256"], name="input_sha256")]

    def __str__(self) -> str:
        return f"{self.kind} {self.sha256[:10]} ({self.width}×{self.height})"


class BlockedPhrase(models.Model):
    """A word or phrase that submit refuses in prompts (the optional prompt blocklist)."""

    phrase = models.CharField(max_length=200, unique=True)
    note = models.CharField(max_length=200, blank=True, help_text="Why it is blocked.")
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["phrase"]

    def __str__(self) -> str:
        return self.phrase


class ModelSource(models.Model):
    """A model added in the admin, beside the bundled demo model, STUDIO_MODELS and the
    models folder (generation.registry)."""

    name = models.SlugField(max_length=settings.MAX_MODEL_NAME, unique=True,
                            allow_unicode=False)
    source = models.CharField(
        max_length=500, help_text="A local diffusers directory, a single-file .safetensors "
        "checkpoint, or a hub id such as “stable-diffusion-v1-5/stable-diffusion-v1-5” (needs "
        "the hub to be reachable).",
    )
    enabled = models.BooleanField(default=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        verbose_name = "model"

    def __str__(self) -> str:
        return self.name


class WeightsHash(models.Model):
    """The sha256 of a model's weights (engine.weights_hash), kept for the files as they were
    when hashed: a checkpoint of gigabytes takes seconds to hash, so a worker or
    `manage.py models` hashes it once and every process reads it here. A web request never
    hashes (generation.registry).

    `path` is the resolved file or diffusers folder; `size` and `mtime_ns` are the file's, or
    for a folder the sum of its weight files' sizes and the newest mtime among them. A row whose
    size or mtime no longer match the files on disk is stale and is hashed again."""

    path = models.CharField(max_length=1024, unique=True)
    size = models.BigIntegerField()
    mtime_ns = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    hashed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["path"]
        verbose_name = "weights hash"

    def __str__(self) -> str:
        return f"{self.path} {self.sha256[:10]}"


class DefaultModel(models.Model):
    """The model a user's AUTOMATIC1111-API calls use when they name none: A1111's
    `sd_model_checkpoint`, set with POST /sdapi/v1/options. One row per user, so one user's
    choice never changes another's or the server's default (generation/compat_a1111.py)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                                primary_key=True, related_name="default_model")
    model = models.CharField(max_length=settings.MAX_MODEL_NAME)
    updated = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.user}: {self.model}"
