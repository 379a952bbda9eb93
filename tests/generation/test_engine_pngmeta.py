"""PNG metadata: A1111's ``parameters`` text and Studio's ``studio_recipe`` JSON."""

import io

from PIL import Image

from generation import engine


def test_a_png_carries_the_recipe_twice_and_reads_back(make_recipe, tiny_pipeline):
    result = engine.generate(
        make_recipe(batch_size=2, subseed=5, subseed_strength=0.25),
        pipeline=tiny_pipeline,
        preview=None,
    )
    recipe = result.recipes[1]
    png = engine.png_with_recipe(result.images[1], recipe)
    with Image.open(io.BytesIO(png)) as image:
        assert image.tobytes() == result.images[1].tobytes()
        assert set(image.text) == {"parameters", "studio_recipe"}
    stored, parameters = engine.read_png(png)
    assert stored == recipe
    assert parameters == (
        "a red circle\n"
        "Steps: 4, Sampler: DDIM, CFG scale: 3, Seed: 8, Size: 32x32, "
        f"Model hash: {recipe.model.hash[:10]}, Model: tiny, "
        "Variation seed: 6, Variation seed strength: 0.25, RNG: CPU, "
        f"Version: studio-{recipe.versions.studio}"
    )


def test_a_png_without_metadata_reads_as_none():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    assert engine.read_png(buffer.getvalue()) == (None, None)


def test_a1111_parameters_written_by_other_tools_parse():
    text = (
        "masterpiece, a cat\nsitting on a mat\n"
        "Negative prompt: blurry, lowres\nbad hands\n"
        "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 1234567890, "
        "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
        "Variation seed: 42, Variation seed strength: 0.3, Denoising strength: 0.7, "
        'Lora hashes: "add_detail: 7c6bad76eb54, x: 1", Version: v1.10.1'
    )
    parsed = engine.parse_parameters(text)
    assert parsed["prompt"] == "masterpiece, a cat\nsitting on a mat"
    assert parsed["negative_prompt"] == "blurry, lowres\nbad hands"
    assert (parsed["steps"], parsed["sampler"], parsed["cfg_scale"], parsed["seed"]) == (
        30,
        "DPM++ 2M",
        7.5,
        1234567890,
    )
    assert (parsed["width"], parsed["height"]) == (512, 768)
    assert (parsed["model"], parsed["model_hash"]) == ("v1-5-pruned-emaonly", "6ce0161689")
    assert (parsed["subseed"], parsed["subseed_strength"]) == (42, 0.3)
    assert parsed["settings"]["Schedule type"] == "Karras"
    assert parsed["settings"]["Lora hashes"] == "add_detail: 7c6bad76eb54, x: 1"


def test_a_prompt_alone_or_without_negative_parses():
    assert engine.parse_parameters("just a prompt")["prompt"] == "just a prompt"
    parsed = engine.parse_parameters(
        "a dog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64"
    )
    assert (parsed["prompt"], parsed["negative_prompt"], parsed["sampler"]) == (
        "a dog",
        "",
        "Euler a",
    )


def test_studio_parameters_parse_back_to_the_recipe(make_recipe):
    recipe = make_recipe(negative_prompt="blue, green", guidance_scale=4.5, seed=99)
    parsed = engine.parse_parameters(engine.format_parameters(recipe.with_batch_index(0)))
    assert (parsed["prompt"], parsed["negative_prompt"]) == (recipe.prompt, recipe.negative_prompt)
    assert (parsed["steps"], parsed["cfg_scale"], parsed["seed"]) == (4, 4.5, 99)
    assert parsed["sampler"] == "DDIM" and parsed["model"] == "tiny"
