"""PNG metadata from strangers: the A1111 ``parameters`` text is read in linear time, the same
way A1111's own regex reads it, and texts too long or too deep are refused, not parsed."""

import contextlib
import io
import json
import random
import re
import time

import pytest
from PIL import Image, PngImagePlugin

from generation import engine
from generation.engine.pngmeta import MAX_PARAMETERS_CHARS, MAX_RECIPE_CHARS, ParametersTooLong

# What A1111 (and this module, before) read the settings line with: the reference for the
# grammar, run here only on short lines, where its backtracking costs nothing.
A1111_SETTING = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
N = MAX_PARAMETERS_CHARS

HOSTILE = {
    "spaces": " " * N,
    "spaces then a word": " " * (N - 1) + "x",
    "one long word": "a" * N,
    "words and spaces": "a " * (N // 2),
    "a key of hyphens": "a-" * (N // 2 - 1) + ":",
    "quotes": '"' * N,
    "colons": "a:" * (N // 2),
    "an unclosed quoted value": 'Steps: "' + "\\," * (N // 2 - 5),
    "many short pairs": "ab: x, " * (N // 7),
    "a prompt, then a long word": "a cat\n" + "b" * (N - 6),
    "negative prompts": "Negative prompt: \n" * (N // 18),
}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_parameters_text_parses_in_linear_time(text):
    assert len(text) <= MAX_PARAMETERS_CHARS
    started = time.perf_counter()
    engine.parse_parameters(text)
    assert time.perf_counter() - started < 0.5


def test_parameters_text_over_the_cap_is_refused_before_it_is_read():
    text = "a" * 2**20  # a megabyte: Pillow accepts far more in a text chunk
    started = time.perf_counter()
    with pytest.raises(ParametersTooLong) as refused:
        engine.parse_parameters(text)
    assert time.perf_counter() - started < 0.05
    assert isinstance(refused.value, ValueError)
    assert f"{MAX_PARAMETERS_CHARS:,}" in str(refused.value)
    engine.parse_parameters("a" * MAX_PARAMETERS_CHARS)  # the cap itself is read


def reference(text: str) -> dict:
    """parse_parameters as it read the settings line with A1111's regex."""
    lines = text.strip().split("\n")
    pairs = A1111_SETTING.findall(lines[-1]) if lines else []
    if len(pairs) < 3:
        return {}
    settings = {}
    for key, value in pairs:
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(value)
        settings[key.strip()] = value
    return settings


PIECES = ["Steps", "CFG scale", "a", "b2", "_", "é", "٣", ":", ": ", ",", ", ", '"', '\\"', "\\",
          " ", "\t", "-", "/", "7", "x y", "Lora hashes", '"q: 1, r"', ";", "\u00a0"]


def test_the_settings_line_reads_as_a1111s_regex_reads_it():
    rng = random.Random(18)
    for _ in range(5000):
        line = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 24)))
        assert engine.parse_parameters(line)["settings"] == reference(line), line


def test_quoted_values_keep_their_commas_colons_and_escapes():
    text = (
        "a cat\nSteps: 20, Sampler: Euler a, "
        'Lora hashes: "detail: 7c6bad76eb54, x: 1", Note: "say \\"hi\\", then: go", '
        'Empty: "", Odd: "no close, CFG scale: 7, Size: 64x64'
    )
    parsed = engine.parse_parameters(text)
    assert parsed["settings"] == reference(text)
    assert parsed["settings"]["Lora hashes"] == "detail: 7c6bad76eb54, x: 1"
    assert parsed["settings"]["Note"] == 'say "hi", then: go'
    assert parsed["settings"]["Empty"] == ""
    assert parsed["settings"]["Odd"] == '"no close'
    assert (parsed["prompt"], parsed["cfg_scale"], parsed["width"]) == ("a cat", 7.0, 64)


def png_with_text(**chunks: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "recipe",
    ["[" * 100_000, "{", '"a recipe"', "[1, 2]", " " * (MAX_RECIPE_CHARS + 1)],
    ids=["nested 100,000 deep", "not JSON", "a string", "a list", "over the cap"],
)
def test_a_studio_recipe_chunk_that_is_not_a_recipe_raises_a_recipe_error(recipe):
    with pytest.raises(engine.RecipeError):
        engine.read_png(png_with_text(studio_recipe=recipe, parameters="a cat"))
