"""Reproducing a stored recipe: identical, within one level, or differs; never on other weights."""

import shutil
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from generation import engine


def test_compare_tells_identical_within_one_level_and_differs():
    a = np.full((4, 4, 3), 100, dtype=np.uint8)
    b, c = a.copy(), a.copy()
    b[0, 0, 0] = 101
    c[1, 1, 2] = 90
    same = engine.compare_images(Image.fromarray(a), Image.fromarray(a))
    assert (same.verdict, same.max_diff, same.psnr) == ("identical", 0, float("inf"))
    close = engine.compare_images(Image.fromarray(a), Image.fromarray(b))
    assert (close.verdict, close.max_diff) == ("within one level", 1) and close.psnr > 60
    far = engine.compare_images(Image.fromarray(a), Image.fromarray(c))
    assert (far.verdict, far.max_diff) == ("differs", 10)


def test_a_batch_image_reproduces_identically(make_recipe, tiny_pipeline):
    result = engine.generate(
        make_recipe(batch_size=2, sampler="Euler a"), pipeline=tiny_pipeline, preview=None
    )
    recipe, _ = engine.read_png(engine.png_with_recipe(result.images[1], result.recipes[1]))
    image, comparison = engine.reproduce(recipe, result.images[1], pipeline=tiny_pipeline)
    assert comparison.verdict == "identical" and image.tobytes() == result.images[1].tobytes()


def test_it_refuses_other_weights(make_recipe, tiny_pipeline, tiny_model, tmp_path):
    recipe = engine.generate(make_recipe(), pipeline=tiny_pipeline, preview=None).recipes[0]
    other = shutil.copytree(tiny_model, tmp_path / "retrained")
    weights = other / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    moved = replace(recipe, model=replace(recipe.model, source=str(other)))
    with pytest.raises(engine.WeightsMismatchError, match="cannot be reproduced"):
        engine.generate(moved, pipeline=tiny_pipeline)
