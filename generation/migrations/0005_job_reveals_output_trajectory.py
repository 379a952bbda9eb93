"""Trajectory frames move from the job to each output, and a job can reveal one image of its
batch (Job.reveals).

A job's stored frames showed its whole batch side by side, so every image's page showed its
siblings, which may be private. A single image's frames move to its output as they are; a
batch's frames are cut into each image's own strip. A frame that cannot be cut exactly (not
a whole multiple of the batch's width, or unreadable) loses that output its frames rather
than show a sibling.
"""

import base64
import binascii
import io

from django.db import migrations, models
from PIL import Image, UnidentifiedImageError

FORMATS = {"webp": "WEBP", "png": "PNG", "jpeg": "JPEG"}


def image_of(url: str, index: int, size: int) -> str | None:
    """The data URL of image `index` of a side-by-side strip of `size`, or None."""
    header, _, data = url.partition(",")
    kind = FORMATS.get(header.removeprefix("data:image/").removesuffix(";base64"))
    if kind is None:
        return None
    with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as strip:
        width, height = strip.size
        if width % size:
            return None
        one = width // size
        picture = strip.crop((index * one, 0, (index + 1) * one, height))
        buffer = io.BytesIO()
        picture.save(buffer, format=kind, quality=80)
    return f"{header},{base64.b64encode(buffer.getvalue()).decode()}"


def frames_of(frames: list, index: int, size: int) -> list:
    if size == 1:
        return frames
    try:
        cut = [{"step": f["step"], "image": image_of(f["image"], index, size)} for f in frames]
    except (OSError, ValueError, KeyError, TypeError, binascii.Error, UnidentifiedImageError):
        return []
    return cut if all(frame["image"] for frame in cut) else []


def frames_to_outputs(apps, schema_editor):
    Job = apps.get_model("generation", "Job")
    Output = apps.get_model("generation", "Output")
    jobs = Job.objects.exclude(trajectory=[]).only("pk", "recipe", "trajectory")
    for job in jobs.iterator(chunk_size=100):
        size = job.recipe.get("batch_size") or 1
        for output in Output.objects.filter(job_id=job.pk).only("pk", "index"):
            trajectory = frames_of(job.trajectory, output.index, size)
            Output.objects.filter(pk=output.pk).update(trajectory=trajectory)
    Job.objects.exclude(trajectory=[]).update(trajectory=[])


class Migration(migrations.Migration):

    dependencies = [
        ('generation', '0004_job_owner_queued'),
    ]

    operations = [
        migrations.AddField(
            model_name='job',
            name='reveals',
            field=models.PositiveSmallIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='output',
            name='trajectory',
            field=models.JSONField(blank=True, default=list),
        ),
        # Backwards, the outputs' frames go with their column: a job's shared frames are
        # what this migration exists to be rid of.
        migrations.RunPython(frames_to_outputs, migrations.RunPython.noop),
    ]
