"""A recipe records its LoRAs (name, weight, the file's sha256), checks them like its other
fields, and the PNG's A1111 parameters carry them as A1111 writes them."""

import pytest

from generation.engine import Recipe, RecipeError
from generation.engine.pngmeta import format_parameters, parse_parameters
from generation.engine.recipe import MAX_LORAS, LoraRef, ModelLimits, ModelRef, check_numbers

MODEL = ModelRef(name="m", source="/models/m", hash="ab" * 32)
LIMITS = ModelLimits(min_size=64, max_size=256, max_prompt_tokens=75)


def with_loras(*loras: LoraRef) -> Recipe:
    return Recipe(prompt="a cat", model=MODEL, loras=loras)


def test_loras_round_trip_through_json_with_their_hashes():
    recipe = with_loras(LoraRef("ink", 0.8, "c" * 64), LoraRef("film", -0.5, "e" * 64))
    data = recipe.to_json()
    assert data["loras"] == [
        {"name": "ink", "weight": 0.8, "hash": "c" * 64},
        {"name": "film", "weight": -0.5, "hash": "e" * 64},
    ]
    assert Recipe.from_json(data) == recipe


def test_a_recipe_from_before_loras_reads_as_one_without_them():
    data = with_loras().to_json()
    del data["loras"]
    assert Recipe.from_json(data).loras == ()


@pytest.mark.parametrize(("loras", "field"), [
    ("ink", "loras"),
    ([{"name": "a"}] * (MAX_LORAS + 1), "loras"),
    ([{"name": 3}], "loras.0.name"),
    ([{"name": "a", "hash": ["x"]}], "loras.0.hash"),
])
def test_malformed_loras_are_refused_by_field(loras, field):
    with pytest.raises(RecipeError) as refused:
        Recipe.from_json({**with_loras().to_json(), "loras": loras})
    assert field in refused.value.errors


def test_a_lora_entry_that_is_not_an_object_is_not_a_recipe():
    with pytest.raises(RecipeError) as refused:
        Recipe.from_json({**with_loras().to_json(), "loras": ["ink"]})
    assert "recipe" in refused.value.errors


@pytest.mark.parametrize(("weight", "ok"), [(0, True), (-10, True), (10.0, True), (10.5, False),
                                            (float("nan"), False), (True, False), ("1", False)])
def test_a_lora_weight_is_a_number_within_bounds(weight, ok):
    errors = check_numbers(with_loras(LoraRef("ink", weight)), LIMITS)
    assert ("loras.0.weight" not in errors) is ok


def test_a_lora_named_twice_is_refused():
    errors = check_numbers(with_loras(LoraRef("ink", 1), LoraRef("ink", 0.5)), LIMITS)
    assert errors == {"loras.1.name": "names 'ink' twice"}


def test_the_parameters_carry_lora_tags_and_hashes_as_a1111_writes_them():
    recipe = with_loras(LoraRef("ink", 0.8, "c" * 64), LoraRef("fi,lm", 1.0, "e" * 64))
    text = format_parameters(recipe, {"ink": "0123456789ab", "fi,lm": "ba9876543210"})
    assert text.splitlines()[0] == "a cat <lora:ink:0.8> <lora:fi,lm:1>"
    assert 'Lora hashes: "ink: 0123456789ab, film: ba9876543210"' in text
    assert parse_parameters(text)["settings"]["Lora hashes"] == (
        "ink: 0123456789ab, film: ba9876543210"
    )


def test_without_loras_the_parameters_say_nothing_of_them():
    text = format_parameters(with_loras())
    assert "Lora" not in text and "<lora:" not in text


def test_without_the_files_hashes_the_tags_stay_and_the_hashes_are_left_out():
    text = format_parameters(with_loras(LoraRef("ink", 0.5, "c" * 64)))
    assert "<lora:ink:0.5>" in text and "Lora hashes" not in text
