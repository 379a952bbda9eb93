"""The one request (generation/job_request.py): its fields' limits are the engine's, and
parsing types each field, naming every one that is not of its type."""

import pytest

from generation import engine, job_request
from generation.job_request import JobRequest, Refused, parse


def test_the_limits_are_the_engines():
    fields = {field.name: field for field in job_request.FIELDS}
    assert fields["steps"].bounds() == (1, 1000)
    assert fields["guidance_scale"].bounds() == (0, 30)
    assert fields["batch_size"].bounds() == (1, engine.MAX_BATCH)
    assert fields["seed"].bounds() == fields["subseed"].bounds() == (0, engine.SEED_MAX)
    assert JobRequest().sampler == engine.DEFAULT_SAMPLER
    assert JobRequest().steps == engine.DEFAULT_STEPS
    assert JobRequest().guidance_scale == engine.DEFAULT_GUIDANCE


def test_a_models_sizes_are_its_own(tiny_model):
    width = next(field for field in job_request.FIELDS if field.name == "width")
    assert width.bounds(engine.load_spec(tiny_model)) == (32, 128)


def test_it_types_form_text_and_json_values_alike():
    form = parse({"prompt": " red circle ", "steps": "7", "guidance_scale": "2.5", "seed": ""})
    json = parse({"prompt": "red circle", "steps": 7, "guidance_scale": 2.5, "seed": None})
    assert form == json == JobRequest(prompt="red circle", steps=7, guidance_scale=2.5)


def test_names_it_does_not_declare_are_ignored():
    assert parse({"prompt": "a", "cfg_scale": "x", "model_hash": 5}) == JobRequest(prompt="a")


def test_each_field_not_of_its_type_is_named():
    with pytest.raises(Refused) as refused:
        parse({"prompt": 5, "steps": 1.5, "seed": True, "guidance_scale": [1],
               "sampler": "DD\x00IM", "width": "wide"})
    assert refused.value.errors == {
        "prompt": "Enter text.", "sampler": "Remove the NUL character.",
        "steps": "Enter a whole number.", "guidance_scale": "Enter a number.",
        "width": "Enter a whole number.", "seed": "Enter a whole number.",
    }
    assert refused.value.kind == Refused.INVALID


def test_overlong_text_is_refused_before_anything_is_typed(settings):
    long = "x" * (settings.STUDIO_MAX_TEXT_CHARS + 1)
    with pytest.raises(Refused) as refused:
        parse({"prompt": long, "model": long, "steps": "many"})
    assert set(refused.value.errors) == {"prompt", "model"}


def test_the_image_to_image_fields_are_declared_for_every_door():
    fields = {field.name: field for field in job_request.FIELDS}
    assert (fields["init_image"].kind, fields["mask"].kind) == (job_request.ImageData,
                                                                 job_request.MaskData)
    assert {name for name, field in fields.items() if field.group == "image"} == {
        "init_image", "mask", "strength", "mask_blur", "paste_back"}
    assert {name for name, field in fields.items() if field.group == "hires"} == {
        "hires_scale", "hires_steps", "hires_strength", "hires_upscaler"}
    assert fields["paste_back"].kind is bool and JobRequest().paste_back is True
    assert fields["strength"].bounds() == (0, 1) and JobRequest().strength is None
    assert fields["hires_upscaler"].choices() == list(engine.UPSCALERS)
    assert JobRequest().hires_upscaler == "Latent"
