"""Image-to-image inputs (generation/engine/inputs.py, input_checks.py): untrusted bytes become
canonical PNGs or clear InputErrors, and a recipe's init_image, strength, mask and hires
fields round-trip through JSON and are validated by field."""

import base64
import hashlib
import io
import struct
import zlib
from dataclasses import replace

import pytest
from PIL import Image

from generation import engine
from generation.engine.inputs import LATENT_UPSCALERS, PIXEL_UPSCALERS

SHA = "ab" * 32


def encoded(image: Image.Image, format: str = "PNG", **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=format, **options)
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` and holds a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_an_image_becomes_an_rgb_png_without_metadata_named_by_its_hash():
    source = Image.new("RGBA", (40, 24), (200, 10, 10, 128))
    info = Image.Exif()
    info[0x010E] = "a secret description"
    png, ref = engine.canonical_image(encoded(source, "WEBP", lossless=True, exif=info))
    assert ref == engine.ImageRef(sha256=hashlib.sha256(png).hexdigest(), width=40, height=24)
    stored = Image.open(io.BytesIO(png))
    assert (stored.format, stored.mode, stored.size) == ("PNG", "RGB", (40, 24))
    assert b"secret" not in png and stored.info == {}
    assert stored.getpixel((0, 0)) == (200, 10, 10)


def test_a_jpeg_turned_by_its_exif_orientation_is_stored_as_people_see_it():
    info = Image.Exif()
    info[0x0112] = 6  # rotate 90 degrees clockwise to display
    _, ref = engine.canonical_image(encoded(Image.new("RGB", (40, 24)), "JPEG", exif=info))
    assert (ref.width, ref.height) == (24, 40)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"GIF89a" + b"\0" * 40, "not a PNG, JPEG or WebP image"),
        (encoded(Image.new("RGB", (8, 8)), "GIF"), "not a PNG, JPEG or WebP image"),
        (encoded(Image.effect_noise((64, 64), 60))[:2000], "not a readable image"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "not a PNG, JPEG or WebP image"),
    ],
)
def test_what_is_not_a_png_jpeg_or_webp_image_is_refused(data, message):
    with pytest.raises(engine.InputError, match=message):
        engine.canonical_image(data)


def test_too_many_bytes_are_refused_before_anything_reads_them():
    with pytest.raises(engine.InputError, match="the most is 1,000 bytes"):
        engine.canonical_image(b"\x89PNG" + b"\0" * 2000, max_bytes=1000)


@pytest.mark.parametrize(("width", "height"), [(5000, 5000), (100_000, 100_000)])
def test_a_decompression_bomb_is_refused_from_its_header_before_decoding(width, height):
    bomb = png_claiming(width, height)
    assert len(bomb) < 200
    with pytest.raises(engine.InputError, match="pixels"):
        engine.canonical_image(bomb)
    with pytest.raises(engine.InputError, match="pixels"):
        engine.canonical_mask(bomb)


def test_the_pixel_limit_is_the_callers():
    image = encoded(Image.new("RGB", (64, 64)))
    with pytest.raises(engine.InputError, match="64x64 pixels; the most is 1,000 pixels"):
        engine.canonical_image(image, max_pixels=1000)
    assert engine.canonical_image(image, max_pixels=4096)[1].width == 64


def test_a_mask_is_greyscale_white_where_painted():
    source = Image.new("RGB", (16, 8), "black")
    source.paste((255, 255, 255), (0, 0, 8, 8))
    png, ref, size = engine.canonical_mask(encoded(source))
    mask = Image.open(io.BytesIO(png))
    assert (mask.mode, size, ref.sha256) == ("L", (16, 8), hashlib.sha256(png).hexdigest())
    assert (mask.getpixel((2, 2)), mask.getpixel((12, 2))) == (255, 0)


def test_a_mask_with_transparency_is_its_alpha_as_a1111_reads_it():
    strokes = Image.new("RGBA", (16, 8), (0, 0, 0, 0))
    strokes.paste((255, 255, 255, 255), (0, 0, 4, 8))
    png, _, _ = engine.canonical_mask(encoded(strokes))
    mask = Image.open(io.BytesIO(png))
    assert (mask.getpixel((1, 1)), mask.getpixel((10, 1))) == (255, 0)


def test_openai_transparent_pixels_become_the_white_area_to_edit():
    image = Image.new("RGBA", (16, 8), (9, 9, 9, 255))
    image.paste((0, 0, 0, 0), (8, 0, 16, 8))
    mask = Image.open(io.BytesIO(engine.mask_from_alpha(encoded(image))))
    assert (mask.mode, mask.getpixel((1, 1)), mask.getpixel((12, 1))) == ("L", 0, 255)
    assert engine.mask_from_alpha(encoded(Image.new("RGBA", (8, 8), (1, 2, 3, 255)))) is None
    assert engine.mask_from_alpha(encoded(Image.new("RGB", (8, 8)))) is None


def test_a_mask_of_another_size_states_the_rule():
    image = engine.ImageRef(sha256=SHA, width=64, height=48)
    assert engine.mask_size_error(image, (64, 48)) is None
    assert "exactly the image's size (it is never resized)" in engine.mask_size_error(
        image, (32, 24)
    )


def test_a_data_url_or_bare_base64_decodes():
    png = encoded(Image.new("RGB", (4, 4)))
    text = base64.b64encode(png).decode()
    assert engine.decode_data_url(text) == png
    assert engine.decode_data_url("data:image/png;base64," + text) == png


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (42, "base64 string"),
        ("data:image/png,abc", "base64 data: URL"),
        ("not base64!", "not valid base64"),
        ("", "empty"),
        ("A" * 2000, "larger than 1,000 bytes"),
    ],
)
def test_a_bad_or_long_base64_string_is_refused_before_decoding(text, message):
    with pytest.raises(engine.InputError, match=message):
        engine.decode_data_url(text, max_bytes=1000)


def test_the_upscalers_are_a1111s_names_latent_ones_first():
    assert (*LATENT_UPSCALERS, *PIXEL_UPSCALERS) == engine.UPSCALERS
    assert engine.UPSCALERS[0] == "Latent" and "Lanczos" in engine.UPSCALERS


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, 20),
        ({"init_image": {"sha256": SHA, "width": 8, "height": 8}, "strength": 0.75}, 15),
        ({"init_image": {"sha256": SHA, "width": 8, "height": 8}, "strength": 0.72}, 14),
        # As diffusers' get_timesteps computes it: 100 x 0.29 is 28.999999999999996.
        ({"init_image": {"sha256": SHA, "width": 8, "height": 8}, "strength": 0.29,
          "steps": 100}, 28),
        ({"hires": {"scale": 2, "steps": 0, "strength": 0.5, "upscaler": "Latent"}}, 30),
        ({"hires": {"scale": 2, "steps": 8, "strength": 0.5, "upscaler": "Latent"}}, 24),
    ],
)
def test_steps_run_counts_the_steps_actually_run(fields, expected):
    assert engine.steps_run({"steps": 20, "strength": None, **fields}) == expected


def test_the_image_to_image_fields_round_trip_through_json(make_recipe):
    image = engine.ImageRef(sha256=SHA, width=40, height=32)
    recipe = make_recipe(init_image=image, strength=0.5, mask=engine.MaskRef(sha256="cd" * 32),
                         mask_blur=4, paste_back=False)
    data = recipe.to_json()
    assert data["init_image"] == {"sha256": SHA, "width": 40, "height": 32}
    assert (data["strength"], data["mask"], data["mask_blur"], data["paste_back"]) == (
        0.5, {"sha256": "cd" * 32}, 4, False)
    assert data["hires"] is None
    assert engine.Recipe.from_json(data) == recipe
    hires = make_recipe(hires=engine.Hires(scale=1.5, steps=2, strength=0.6, upscaler="Lanczos"))
    data = hires.to_json()
    assert data["hires"] == {"scale": 1.5, "steps": 2, "strength": 0.6, "upscaler": "Lanczos"}
    assert engine.Recipe.from_json(data) == hires
    assert data["init_image"] is None and data["strength"] is None and data["paste_back"]


def test_an_old_recipe_without_the_fields_reads_as_text_to_image(make_recipe):
    data = make_recipe().to_json()
    for key in ("init_image", "strength", "mask", "mask_blur", "paste_back", "hires"):
        del data[key]
    recipe = engine.Recipe.from_json(data)
    assert (recipe.init_image, recipe.strength, recipe.hires) == (None, None, None)


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("init_image", {"sha256": "../../etc/passwd", "width": 8, "height": 8},
         "init_image.sha256"),
        ("init_image", {"sha256": SHA}, "init_image"),
        ("init_image", [SHA], "init_image"),
        ("mask", {"sha256": SHA.upper()}, "mask.sha256"),
        ("hires", {"scale": 2, "colour": "red"}, "hires"),
        ("strength", [0.5], "strength"),
    ],
)
def test_a_malformed_part_is_refused_by_field(make_recipe, key, value, error):
    data = {**make_recipe().to_json(), key: value}
    with pytest.raises(engine.RecipeError) as caught:
        engine.Recipe.from_json(data)
    assert error in caught.value.errors


def test_an_img2img_recipe_defaults_to_the_image_size_down_to_a_multiple_of_8(tiny_ref):
    image = engine.ImageRef(sha256=SHA, width=45, height=39)
    recipe = engine.build_recipe(model=tiny_ref, prompt="a", init_image=image, strength=0.5)
    assert (recipe.width, recipe.height) == (40, 32)


def errors_of(make_recipe, **fields) -> dict[str, str]:
    with pytest.raises(engine.RecipeError) as caught:
        make_recipe(**fields)
    return caught.value.errors


IMAGE = engine.ImageRef(sha256=SHA, width=32, height=32)


@pytest.mark.parametrize(
    ("fields", "key", "message"),
    [
        ({"init_image": IMAGE, "strength": 1.5}, "strength", "from 0 to 1"),
        ({"init_image": IMAGE, "strength": -0.1}, "strength", "from 0 to 1"),
        ({"init_image": IMAGE, "strength": True}, "strength", "from 0 to 1"),
        ({"init_image": IMAGE, "strength": 0.2}, "strength", "int(4 steps x 0.2) = 0 steps"),
        ({"init_image": IMAGE}, "strength", "is needed with an init_image"),
        ({"strength": 0.5}, "strength", "only with an init_image"),
        ({"mask": engine.MaskRef(SHA)}, "mask", "only with an init_image"),
        ({"init_image": IMAGE, "strength": 0.5, "mask_blur": 65}, "mask_blur", "0 to 64"),
        ({"init_image": IMAGE, "strength": 0.5, "paste_back": 1}, "paste_back", "true or false"),
        ({"init_image": IMAGE, "strength": 0.5, "subseed_strength": 0.3}, "subseed_strength",
         "variation seeds"),
        ({"hires": engine.Hires(scale=2), "subseed_strength": 0.3}, "subseed_strength",
         "variation seeds"),
        ({"hires": engine.Hires(scale=5)}, "hires.scale", "from 1 to 4"),
        ({"hires": engine.Hires(scale=4, strength=0.5), "width": 48, "height": 48}, "hires.scale",
         "makes 192x192; this model takes at most 128"),
        ({"hires": engine.Hires(scale=2, steps=-1)}, "hires.steps", "from 0"),
        ({"hires": engine.Hires(scale=2, strength=0.1)}, "hires.strength", "0 steps"),
        ({"hires": engine.Hires(scale=2, upscaler="ESRGAN_4x")}, "hires.upscaler",
         "unknown upscaler"),
        ({"init_image": IMAGE, "strength": 0.5, "hires": engine.Hires(scale=2)}, "hires",
         "only to text to image"),
        ({"init_image": replace(IMAGE, width=0), "strength": 0.5}, "init_image.width",
         "whole number"),
    ],
)
def test_bad_image_to_image_fields_are_refused_by_field(make_recipe, fields, key, message):
    errors = errors_of(make_recipe, **fields)
    assert key in errors and message in errors[key], errors


def test_a_good_img2img_recipe_validates(make_recipe):
    recipe = make_recipe(init_image=IMAGE, strength=0.25, mask=engine.MaskRef(SHA), mask_blur=4)
    assert engine.steps_run(recipe) == 1
    assert engine.steps_run(make_recipe(hires=engine.Hires(scale=2, strength=0.5))) == 4 + 2


def test_png_parameters_carry_img2img_and_hires_settings_as_a1111_writes_them(make_recipe):
    inpaint = make_recipe(init_image=IMAGE, strength=0.75, mask=engine.MaskRef(SHA),
                          mask_blur=4)
    text = engine.format_parameters(inpaint)
    assert "Denoising strength: 0.75, Mask blur: 4" in text
    parsed = engine.parse_parameters(text)
    assert (parsed["denoising_strength"], parsed["mask_blur"]) == (0.75, 4)
    assert "Hires" not in text
    hires = make_recipe(hires=engine.Hires(scale=1.5, steps=3, strength=0.6,
                                           upscaler="Latent (bicubic)"))
    text = engine.format_parameters(hires)
    assert ("Size: 32x32" in text and "Denoising strength: 0.6, Hires upscale: 1.5, "
            "Hires steps: 3, Hires upscaler: Latent (bicubic)" in text)
    parsed = engine.parse_parameters(text)
    assert (parsed["hires_scale"], parsed["hires_steps"], parsed["hires_upscaler"]) == (
        1.5, 3, "Latent (bicubic)")
    assert "Hires steps" not in engine.format_parameters(
        make_recipe(hires=engine.Hires(scale=2)))
    assert "Denoising" not in engine.format_parameters(make_recipe())


def test_a1111_hires_and_inpaint_parameters_parse():
    hires = engine.parse_parameters(
        "a cat\nNegative prompt: ugly\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, "
        "CFG scale: 7, Seed: 1234, Size: 512x512, Model hash: 6ce0161689, Model: v1-5, "
        "Denoising strength: 0.7, Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, "
        "Version: v1.10.1")
    assert (hires["denoising_strength"], hires["hires_scale"], hires["hires_steps"],
            hires["hires_upscaler"], hires["width"]) == (0.7, 2.0, 10, "Latent", 512)
    inpaint = engine.parse_parameters(
        "a dog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512, "
        "Denoising strength: 0.75, Mask blur: 4, Version: v1.10.1")
    assert (inpaint["denoising_strength"], inpaint["mask_blur"]) == (0.75, 4)
    assert "hires_scale" not in inpaint
