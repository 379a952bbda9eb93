"""The recipe inside a PNG, twice (docs/architecture.md §4): AUTOMATIC1111's ``parameters`` text,
which other tools read and write, and Studio's ``studio_recipe`` JSON, which reproduces the
pixels."""

import contextlib
import io
import json
from collections.abc import Mapping
from typing import Any

from PIL import Image, PngImagePlugin

from .recipe import Recipe, RecipeError

PARAMETERS_KEY = "parameters"
RECIPE_KEY = "studio_recipe"

# The longest texts read from a PNG, whoever made it. A1111's parameters run to a few KB (two
# prompts and a line of settings); Studio's recipe JSON to tens of KB (a scheduler config may
# hold 1000 betas). A text chunk can hold megabytes, and an import reads both.
MAX_PARAMETERS_CHARS = 64 * 1024
MAX_RECIPE_CHARS = 2**20


class ParametersTooLong(ValueError):
    """``parameters`` text over MAX_PARAMETERS_CHARS: refused whole, not cut, since a cut
    prompt would be another recipe."""

    def __init__(self, length: int):
        super().__init__(
            f"The parameters text is {length:,} characters long; "
            f"at most {MAX_PARAMETERS_CHARS:,} are read."
        )


def png_with_recipe(
    image: Image.Image, recipe: Recipe, lora_hashes: Mapping[str, str] | None = None
) -> bytes:
    """The image as PNG bytes carrying both chunks. The JSON goes in a compressed iTXt chunk:
    a zero-terminal-SNR model's scheduler config holds its 1000 betas."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, format_parameters(recipe, lora_hashes))
    info.add_itxt(RECIPE_KEY, json.dumps(recipe.to_json()), zip=True)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_png(data: bytes) -> tuple[Recipe | None, str | None]:
    """The Studio recipe and the A1111 ``parameters`` text of a PNG, each None when absent.

    A ``studio_recipe`` chunk that is not a recipe raises RecipeError (a ValueError): JSON
    that is malformed, nested too deep, or over MAX_RECIPE_CHARS.
    """
    with Image.open(io.BytesIO(data)) as image:
        text = dict(getattr(image, "text", {}))
    recipe = text.get(RECIPE_KEY)
    return (_recipe(recipe) if recipe else None), text.get(PARAMETERS_KEY)


def _recipe(text: str) -> Recipe:
    if len(text) > MAX_RECIPE_CHARS:
        raise RecipeError({"recipe": f"longer than {MAX_RECIPE_CHARS:,} characters"})
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RecipeError({"recipe": "not JSON"}) from exc
    return Recipe.from_json(document)


def _quote(value: Any) -> str:
    # A1111's own rule: a value that would break the "Key: value, " syntax is JSON-quoted.
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",\n:") else text


def format_parameters(recipe: Recipe, lora_hashes: Mapping[str, str] | None = None) -> str:
    """A1111's ``parameters`` text, with the image's own seed (seed + batch_index).

    ``lora_hashes`` maps each LoRA's name to what A1111 writes under "Lora hashes", the first
    12 hex of the sha256 of its tensors (``loras.a1111_hash``); only the process that has the
    files (a worker) knows them, so without it the key is left out.
    """
    settings = {
        "Steps": recipe.steps,
        "Sampler": recipe.sampler,
        "CFG scale": f"{recipe.guidance_scale:g}",
        "Seed": recipe.image_seed,
        "Size": f"{recipe.width}x{recipe.height}",
        "Model hash": recipe.model.hash[:10],
        "Model": recipe.model.name,
    }
    if recipe.subseed_strength:
        settings["Variation seed"] = recipe.subseed + recipe.batch_index
        settings["Variation seed strength"] = f"{recipe.subseed_strength:g}"
    settings.update(_image_settings(recipe))
    if recipe.loras and lora_hashes:
        # As A1111 writes them: "name: short hash" pairs, the whole value quoted.
        settings["Lora hashes"] = ", ".join(
            f"{_lora_alias(lora.name)}: {lora_hashes[lora.name]}" for lora in recipe.loras
        )
    settings["RNG"] = "CPU"
    if recipe.versions is not None:
        settings["Version"] = f"studio-{recipe.versions.studio}"
    # A1111 reads a LoRA from its tag in the prompt; the recipe keeps them apart.
    tags = "".join(f" <lora:{lora.name}:{lora.weight:g}>" for lora in recipe.loras)
    lines = [recipe.prompt + tags]
    if recipe.negative_prompt:
        lines.append(f"Negative prompt: {recipe.negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in settings.items()))
    return "\n".join(lines)


def _image_settings(recipe: Recipe) -> dict[str, Any]:
    """What A1111 writes for img2img, inpainting and a hires fix (whose "Size" is the first
    pass's, as the recipe's width and height are). A1111's parameters do not name the input
    image; Studio's recipe chunk does."""
    settings: dict[str, Any] = {}
    if recipe.init_image is not None and recipe.strength is not None:
        settings["Denoising strength"] = f"{recipe.strength:g}"
        if recipe.mask is not None and recipe.mask_blur:
            settings["Mask blur"] = recipe.mask_blur
    if recipe.hires is not None:
        settings["Denoising strength"] = f"{recipe.hires.strength:g}"
        settings["Hires upscale"] = f"{recipe.hires.scale:g}"
        if recipe.hires.steps:
            settings["Hires steps"] = recipe.hires.steps
        settings["Hires upscaler"] = recipe.hires.upscaler
    return settings


def _lora_alias(name: str) -> str:
    """A1111 drops the characters that would split its list."""
    return name.replace(":", "").replace(",", "")


def parse_parameters(text: str) -> dict[str, Any]:
    """A1111 ``parameters`` text, as Studio or another tool wrote it.

    Returns ``prompt`` and ``negative_prompt`` (either may span lines), ``settings`` with
    every "Key: value" of the last line as text, and the common settings typed: ``steps``,
    ``sampler``, ``cfg_scale``, ``seed``, ``width``, ``height``, ``model``, ``model_hash``,
    ``subseed``, ``subseed_strength``, ``denoising_strength``, ``mask_blur``,
    ``hires_scale``, ``hires_steps`` and ``hires_upscaler`` where present. Raises
    ParametersTooLong for a text over MAX_PARAMETERS_CHARS, before reading any of it.
    """
    if len(text) > MAX_PARAMETERS_CHARS:
        raise ParametersTooLong(len(text))
    lines = text.strip().split("\n")
    settings: dict[str, str] = {}
    if lines and len(pairs := _settings(lines[-1])) >= 3:
        lines.pop()
        settings = {key.strip(): _unquote(value) for key, value in pairs}
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line.removeprefix("Negative prompt:").lstrip()
        (negative if in_negative else prompt).append(line)
    return {
        "prompt": "\n".join(prompt),
        "negative_prompt": "\n".join(negative),
        "settings": settings,
        **_typed(settings),
    }


# A1111 reads its settings line with the regex
#     \s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)
# whose key and leading-space parts backtrack over each other: quadratic in a long run of
# words or spaces. The functions below read the same grammar in one pass.
_KEY_MARKS = " -/"


def _settings(line: str) -> list[tuple[str, str]]:
    """Every (key, raw value) of a settings line, in order: a key is two or more word
    characters, spaces, hyphens or slashes, starting with a word character, just before a
    colon; its value is a JSON-quoted string followed by a comma or the end, or else
    everything up to the next comma. Text that is neither is skipped."""
    pairs = []
    start = 0
    while (colon := line.find(":", start)) >= 0:
        key = _key_before(line, start, colon)
        if key is None:
            start = colon + 1
            continue
        value, start = _value_after(line, colon + 1)
        pairs.append((key, value))
    return pairs


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"  # what \w matches in a str pattern


def _key_before(line: str, start: int, colon: int) -> str | None:
    """The key that ends at ``colon`` and begins at or after ``start``, if any."""
    first = colon
    while first > start and (_is_word(line[first - 1]) or line[first - 1] in _KEY_MARKS):
        first -= 1
    while first < colon and not _is_word(line[first]):
        first += 1
    return line[first:colon] if colon - first >= 2 else None


def _value_after(line: str, position: int) -> tuple[str, int]:
    """The raw value that starts at ``position`` (after the colon), and where the next pair
    may start."""
    while position < len(line) and line[position].isspace():
        position += 1
    if line.startswith('"', position):
        end = _closing_quote(line, position + 1)
        if end is not None and end > position + 1 and line[end + 1 : end + 2] in (",", ""):
            return line[position : end + 1], end + 2
    comma = line.find(",", position)
    if comma < 0:
        return line[position:], len(line)
    return line[position:comma], comma + 1


def _closing_quote(line: str, position: int) -> int | None:
    """The index of the quote that closes a string whose text starts at ``position``, where a
    backslash escapes the character after it; None if the line ends first."""
    while position < len(line):
        if line[position] == '"':
            return position
        position += 2 if line[position] == "\\" else 1
    return None


def _unquote(value: str) -> str:
    value = value.strip()
    if value.startswith('"') and value.endswith('"'):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


_TYPED = {
    "Steps": ("steps", int),
    "Sampler": ("sampler", str),
    "CFG scale": ("cfg_scale", float),
    "Seed": ("seed", int),
    "Model": ("model", str),
    "Model hash": ("model_hash", str),
    "Variation seed": ("subseed", int),
    "Variation seed strength": ("subseed_strength", float),
    "Denoising strength": ("denoising_strength", float),
    "Mask blur": ("mask_blur", int),
    "Hires upscale": ("hires_scale", float),
    "Hires steps": ("hires_steps", int),
    "Hires upscaler": ("hires_upscaler", str),
}


def _typed(settings: dict[str, str]) -> dict[str, Any]:
    typed: dict[str, Any] = {}
    for key, (name, kind) in _TYPED.items():
        if key in settings:
            # another tool's odd value stays readable in ``settings``
            with contextlib.suppress(ValueError):
                typed[name] = kind(settings[key])
    width, _, height = settings.get("Size", "").partition("x")
    if width.isdigit() and height.isdigit():
        typed["width"], typed["height"] = int(width), int(height)
    return typed
