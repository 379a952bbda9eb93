"""Re-running a stored recipe and telling how close the new pixels are to the old ones."""

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .generate import generate
from .models import StudioPipeline
from .recipe import Recipe

IDENTICAL = "identical"
WITHIN_ONE_LEVEL = "within one level"
DIFFERS = "differs"


@dataclass(frozen=True)
class Comparison:
    verdict: str  # IDENTICAL, WITHIN_ONE_LEVEL or DIFFERS
    max_diff: int  # largest difference of one channel of one pixel, in 8-bit levels
    psnr: float  # in dB; infinite when identical

    def to_json(self) -> dict:
        return {"verdict": self.verdict, "max_diff": self.max_diff, "psnr": _finite(self.psnr)}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no infinity


def compare_images(original: Image.Image, new: Image.Image) -> Comparison:
    """Identical, within one 8-bit level (what batched CPU kernels change, docs/architecture.md §4),
    or differs; with the largest difference and the PSNR."""
    if original.size != new.size:
        return Comparison(verdict=DIFFERS, max_diff=255, psnr=0.0)
    a = np.asarray(original.convert("RGB"), dtype=np.int16)
    b = np.asarray(new.convert("RGB"), dtype=np.int16)
    diff = np.abs(a - b)
    max_diff = int(diff.max())
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
    verdict = IDENTICAL if max_diff == 0 else WITHIN_ONE_LEVEL if max_diff == 1 else DIFFERS
    return Comparison(verdict=verdict, max_diff=max_diff, psnr=psnr)


def reproduce(
    recipe: Recipe, original: Image.Image, *, pipeline: StudioPipeline
) -> tuple[Image.Image, Comparison]:
    """Run the recipe again and compare with ``original``.

    The whole batch runs again, at the recorded threads, so the image at ``batch_index`` can
    come out identical; a single run with seed + batch_index would only be within a level.
    ``generate`` refuses (WeightsMismatchError) when the weights are not the recipe's.
    """
    result = generate(recipe, pipeline=pipeline, preview=None)
    image = result.images[recipe.batch_index]
    return image, compare_images(original, image)
