"""How close two renderings of one recipe are: identical, within one 8-bit level, or not.

Numpy and Pillow only: the web tier compares uploads with it (docs/architecture.md §1).
"""

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

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
