"""Which models Studio knows: the demo model, STUDIO_MODELS, and those added in the admin."""

import pytest
from django.conf import settings as django_settings
from django.urls import reverse

from generation import registry
from generation.admin import ModelSourceForm
from generation.models import ModelSource

pytestmark = pytest.mark.django_db


def test_the_demo_model_comes_first_then_settings_then_the_admins(settings, tiny_model):
    settings.STUDIO_MODELS = {"from-settings": tiny_model}
    ModelSource.objects.create(name="from-admin", source=tiny_model)
    ModelSource.objects.create(name="switched-off", source=tiny_model, enabled=False)
    assert list(registry.models()) == [
        django_settings.STUDIO_DEMO_MODEL_NAME, "from-settings", "from-admin"
    ]


def test_an_admin_entry_cannot_shadow_the_demo_model_or_a_setting(settings, tiny_model):
    settings.STUDIO_MODELS = {"mine": tiny_model}
    ModelSource.objects.create(name=django_settings.STUDIO_DEMO_MODEL_NAME, source="/elsewhere")
    ModelSource.objects.create(name="mine", source="/elsewhere")
    models = registry.models()
    assert models[django_settings.STUDIO_DEMO_MODEL_NAME] == str(
        django_settings.STUDIO_DEMO_MODEL_PATH
    )
    assert models["mine"] == tiny_model


def test_the_admin_form_refuses_a_source_studio_cannot_read(tmp_path):
    form = ModelSourceForm({"name": "broken", "source": str(tmp_path), "enabled": True})
    assert not form.is_valid()
    assert "Studio cannot read this model" in form.errors["source"][0]


def test_the_admin_form_accepts_a_readable_model(tiny_model):
    form = ModelSourceForm({"name": "tiny-two", "source": tiny_model, "enabled": True})
    assert form.is_valid(), form.errors


def test_an_admin_added_model_is_offered_and_generates(client, alice, tiny_model):
    ModelSource.objects.create(name="tiny-two", source=tiny_model)
    client.force_login(alice)
    assert '<option value="tiny-two"' in client.get(reverse("generate")).content.decode()
    response = client.post(reverse("job_submit"), {
        "prompt": "red circle", "model": "tiny-two", "steps": "2", "width": "32", "height": "32",
    })
    assert response.status_code == 201
