"""The recipe inside a PNG, twice (DESIGN §4): AUTOMATIC1111's ``parameters`` text, which other
tools read and write, and Studio's ``studio_recipe`` JSON, which reproduces the pixels."""

import contextlib
import io
import json
import re
from typing import Any

from PIL import Image, PngImagePlugin

from .recipe import Recipe

PARAMETERS_KEY = "parameters"
RECIPE_KEY = "studio_recipe"

# One "Key: value" pair of A1111's settings line; a value with a comma or colon is quoted.
_SETTING = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def png_with_recipe(image: Image.Image, recipe: Recipe) -> bytes:
    """The image as PNG bytes carrying both chunks. The JSON goes in a compressed iTXt chunk:
    a zero-terminal-SNR model's scheduler config holds its 1000 betas."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, format_parameters(recipe))
    info.add_itxt(RECIPE_KEY, json.dumps(recipe.to_json()), zip=True)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_png(data: bytes) -> tuple[Recipe | None, str | None]:
    """The Studio recipe and the A1111 ``parameters`` text of a PNG, each None when absent."""
    with Image.open(io.BytesIO(data)) as image:
        text = dict(getattr(image, "text", {}))
    recipe = text.get(RECIPE_KEY)
    return (Recipe.from_json(json.loads(recipe)) if recipe else None), text.get(PARAMETERS_KEY)


def _quote(value: Any) -> str:
    # A1111's own rule: a value that would break the "Key: value, " syntax is JSON-quoted.
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",\n:") else text


def format_parameters(recipe: Recipe) -> str:
    """A1111's ``parameters`` text, with the image's own seed (seed + batch_index)."""
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
    settings["RNG"] = "CPU"
    if recipe.versions is not None:
        settings["Version"] = f"studio-{recipe.versions.studio}"
    lines = [recipe.prompt]
    if recipe.negative_prompt:
        lines.append(f"Negative prompt: {recipe.negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in settings.items()))
    return "\n".join(lines)


def parse_parameters(text: str) -> dict[str, Any]:
    """A1111 ``parameters`` text, as Studio or another tool wrote it.

    Returns ``prompt`` and ``negative_prompt`` (either may span lines), ``settings`` with
    every "Key: value" of the last line as text, and the common settings typed: ``steps``,
    ``sampler``, ``cfg_scale``, ``seed``, ``width``, ``height``, ``model``, ``model_hash``,
    ``subseed`` and ``subseed_strength`` where present.
    """
    lines = text.strip().split("\n")
    settings: dict[str, str] = {}
    if lines and len(_SETTING.findall(lines[-1])) >= 3:
        settings = {key.strip(): _unquote(value) for key, value in _SETTING.findall(lines.pop())}
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
