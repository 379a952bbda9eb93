import io

import pytest
from django.core.files.base import ContentFile
from PIL import Image as PILImage

from gallery.models import Image, Visibility
from gallery.services import index_prompts
from generation.models import Job, Output


def png_bytes(color=(220, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (8, 8), color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def make_image(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path

    def make(owner, visibility=Visibility.PRIVATE, team=None, hidden=False, prompt="a red circle"):
        recipe = {"prompt": prompt, "model": {"name": "studio-demo"}, "sampler": "DDIM",
                  "seed": 7, "batch_index": 0, "steps": 4}
        job = Job.objects.create(owner=owner, recipe=recipe, status=Job.Status.SUCCEEDED)
        output = Output.objects.create(
            job=job, index=0, image=ContentFile(png_bytes(), name="0.png"), recipe=recipe,
            width=8, height=8,
        )
        image = Image.objects.create(
            output=output, owner=owner, visibility=visibility, team=team, hidden=hidden,
            prompt=prompt, model_name="studio-demo", sampler="DDIM", seed=7,
        )
        index_prompts(Image.objects.filter(pk=image.pk))
        return image

    return make
