import io

import pytest
from django.core.files.base import ContentFile
from PIL import Image as PILImage

from gallery.models import Image, Visibility
from gallery.services import prompt_vector
from generation.models import Job, Output

TRAJECTORY = [{"step": step, "image": f"data:image/webp;base64,frame{step}"} for step in (1, 2, 4)]


def png_bytes(color=(220, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (8, 8), color).save(buffer, "PNG")
    return buffer.getvalue()


def recipe_for(prompt: str, **fields) -> dict:
    return {
        "prompt": prompt, "negative_prompt": "", "sampler": "DDIM", "seed": 7,
        "model": {"name": "studio-demo", "source": "/nowhere", "hash": "ab" * 32},
        "batch_size": 1, "batch_index": 0, "steps": 4, "guidance_scale": 3.0,
        "width": 8, "height": 8, **fields,
    }


@pytest.fixture
def make_image(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path

    def make(owner, visibility=Visibility.PRIVATE, team=None, hidden=False, prompt="a red circle"):
        recipe = recipe_for(prompt)
        job = Job.objects.create(
            owner=owner, recipe=recipe, status=Job.Status.SUCCEEDED, trajectory=TRAJECTORY
        )
        output = Output.objects.create(
            job=job, index=0, image=ContentFile(png_bytes(), name="0.png"), recipe=recipe,
            width=8, height=8,
        )
        return Image.objects.create(
            output=output, owner=owner, visibility=visibility, team=team, hidden=hidden,
            prompt=prompt, model_name="studio-demo", sampler="DDIM", seed=7,
            search=prompt_vector(prompt),
        )

    return make


@pytest.fixture
def as_viewer(client, alice, bob, carol, admin):
    """The test client logged in as one of the people by name, or anonymous."""
    people = {"alice": alice, "bob": bob, "carol": carol, "admin": admin}

    def login(name):
        client.logout()
        if name != "anonymous":
            client.force_login(people[name])
        return client

    return login


