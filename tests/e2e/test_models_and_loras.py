"""In a browser: models dropped into the models folder are on the generate page, each opening
at its own size, and a LoRA picked with its weight is applied by a real worker and recorded
in the image's recipe and PNG."""

import io
import shutil

import pytest
import torch
from django.conf import settings
from PIL import Image
from playwright.sync_api import expect

from generation import engine
from generation.models import Job
from tests.conftest import Worker
from tests.generation.conftest import DEMO_WEIGHTS
from tests.generation.test_engine_loras import lora_tensors, write_peft

from .test_generate import log_in

pytestmark = pytest.mark.e2e


@pytest.fixture
def folders(settings, tmp_path, tiny_model):
    models = tmp_path / "models"
    (models / "lora").mkdir(parents=True)
    shutil.copytree(tiny_model, models / "tiny-folder")
    demo = engine.load_pipeline(str(DEMO_WEIGHTS), device="cpu", dtype=torch.float32)
    write_peft(models / "lora" / "ink.safetensors", lora_tensors(demo.unet, seed=1))
    settings.STUDIO_MODELS_DIR, settings.STUDIO_LORAS_DIR = models, models / "lora"
    return models


def test_a_model_opens_at_its_size_and_a_picked_lora_is_applied(
    studio_server, page, alice, folders
):
    worker = Worker(env={"STUDIO_MODELS_DIR": str(folders),
                         "STUDIO_LORAS_DIR": str(folders / "lora")})
    worker.start()
    try:
        log_in(page, studio_server, "alice")
        width = page.locator("#id_width")
        expect(width).to_have_value("64")  # the demo model's own size
        page.select_option("#id_model", "tiny-folder")
        expect(width).to_have_value("32")
        expect(page.locator("#id_height")).to_have_value("32")
        page.select_option("#id_model", settings.STUDIO_DEMO_MODEL_NAME)
        expect(width).to_have_value("64")

        page.locator("summary", has_text="LoRAs").click()
        page.select_option("#lora-pick", "ink")
        page.fill("#lora-weight", "0.5")
        page.get_by_role("button", name="Add").click()
        expect(page.locator("#id_loras")).to_have_value("ink:0.5")
        page.fill("#id_prompt", "a red circle on a blue background")
        page.fill("#id_steps", "4")
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("#status-text")).to_contain_text("Done — seed", timeout=120_000)
    finally:
        worker.stop()
    output = Job.objects.get(owner=alice).outputs.get()
    digest = engine.weights_hash(str(folders / "lora" / "ink.safetensors"))
    assert output.recipe["loras"] == [{"name": "ink", "weight": 0.5, "hash": digest}]
    with output.image.open("rb") as f:
        parameters = Image.open(io.BytesIO(f.read())).text["parameters"]
    short = engine.a1111_hash(folders / "lora" / "ink.safetensors")
    assert "<lora:ink:0.5>" in parameters and f'Lora hashes: "ink: {short}"' in parameters


def test_an_unknown_lora_is_named_next_to_the_field(studio_server, page, alice, folders):
    log_in(page, studio_server, "alice")
    page.locator("summary", has_text="LoRAs").click()
    page.fill("#id_loras", "nothing-here:1")
    page.fill("#id_prompt", "a red circle")
    page.get_by_role("button", name="Generate").click()
    error = page.locator('[data-error-for="loras"]')
    expect(error).to_contain_text("Unknown LoRA “nothing-here”. Known: ink.")
