"""LoRAs on every door: the request reads them as JSON or `name:weight` text, the A1111 door
from `<lora:name:weight>` tags in the prompt, and the recipe names each by its file, refusing
a name no file has or a file made for another kind of model."""

import numpy as np
import pytest
from safetensors.numpy import save_file

from generation import recipes
from generation.a1111_request import prompt_loras
from generation.job_request import LoraChoice, Refused, parse

RANK = 4


def write_lora(path, width: int) -> None:
    block = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    save_file({f"{block}.lora_A.weight": np.ones((RANK, width), np.float32),
               f"{block}.lora_B.weight": np.ones((8, RANK), np.float32)}, path)


@pytest.mark.parametrize("raw", [
    "ink:0.8, film", [{"name": "ink", "weight": 0.8}, {"name": "film"}],
    "ink : 0.8 ,film,", [{"name": "ink", "weight": "0.8"}, {"name": "film", "weight": None}],
])
def test_loras_read_from_text_or_json(raw):
    assert parse({"prompt": "p", "loras": raw}).loras == (
        LoraChoice("ink", 0.8), LoraChoice("film", 1.0)
    )


@pytest.mark.parametrize(("raw", "message"), [
    ("ink:strong", "Enter a number."),
    ([{"name": "ink", "scale": 1}], "Enter LoRAs as name:weight"),
    ([["ink", 1]], "Enter LoRAs as name:weight"),
    (":0.5", "Name each LoRA."),
    (",".join(["a"] * 9), "Choose at most 8 LoRAs."),
    ({"name": "ink"}, "Enter LoRAs as name:weight"),
    (7, "Enter LoRAs as name:weight"),
])
def test_malformed_loras_are_refused_under_their_field(raw, message):
    with pytest.raises(Refused) as refused:
        parse({"prompt": "p", "loras": raw})
    assert message in refused.value.errors["loras"]


def test_an_a1111_prompt_gives_up_its_lora_tags():
    prompt, loras = prompt_loras(
        "a cat <lora:ink:0.7>, in <lora:film> snow <lora:x:te=0.5:unet=0.5>"
    )
    assert prompt == "a cat , in  snow"
    assert loras == [{"name": "ink", "weight": 0.7}, {"name": "film", "weight": 1.0},
                     {"name": "x", "weight": 0.5}]
    assert prompt_loras("no tags <lora:unclosed") == ("no tags <lora:unclosed", [])


@pytest.mark.parametrize(("tag", "message"), [
    ("<lora:ink:0.5:1>", "one weight"), ("<lora:ink:unet=0.2>", "one weight"),
    ("<lora:ink:lots>", "must be a number"),
])
def test_a_tag_studio_cannot_follow_is_refused(tag, message):
    with pytest.raises(ValueError, match=message):
        prompt_loras(f"a cat {tag}")


@pytest.fixture
def lora_folder(settings, tmp_path):
    settings.STUDIO_LORAS_DIR = tmp_path
    write_lora(tmp_path / "ink.safetensors", width=16)  # the tiny model reads 16-wide text
    write_lora(tmp_path / "xl-style.safetensors", width=2048)
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 4)
    return tmp_path


@pytest.mark.django_db
def test_a_recipe_names_each_lora_by_file(tiny, lora_folder):
    recipe = recipes.recipe_from_params({"prompt": "abc", "model": tiny, "loras": "ink:0.6"})
    # Not hashed yet: the worker fills the hash in, as for a model (no web request hashes).
    assert recipe["loras"] == [{"name": "ink", "weight": 0.6, "hash": ""}]


@pytest.mark.django_db
@pytest.mark.parametrize(("loras", "field", "message"), [
    ("nothing-here", "loras.0.name", "Unknown LoRA “nothing-here”. Known: broken, ink, xl-style."),
    ("ink, xl-style", "loras.1.name", "was trained for a model reading SDXL text (2048 wide)"),
    ("broken", "loras.0.name", "cannot be read"),
    ("ink:11", "loras.0.weight", "must be a number from -10 to 10"),
    ("ink, ink:0.5", "loras.1.name", "names 'ink' twice"),
])
def test_a_lora_that_cannot_apply_is_refused_by_name(tiny, lora_folder, loras, field, message):
    with pytest.raises(Refused) as refused:
        recipes.recipe_from_params({"prompt": "abc", "model": tiny, "loras": loras})
    assert message in refused.value.errors[field]


def test_an_a1111_request_asks_for_the_loras_its_prompt_names():
    from generation.a1111_request import Txt2ImgIn, studio_request

    request = studio_request(Txt2ImgIn(prompt="red circle <lora:ink:0.5>", seed=1))
    assert (request.prompt, request.loras) == ("red circle", (LoraChoice("ink", 0.5),))
    with pytest.raises(Refused) as refused:
        studio_request(Txt2ImgIn(prompt="red <lora:ink:0.5:1>"))
    assert "one weight" in refused.value.errors["prompt"]
