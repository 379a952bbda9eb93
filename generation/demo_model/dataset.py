"""The procedural captioned-shapes dataset the demo model is trained on.

Every image is a function of its index alone, so the dataset is deterministic without being
stored: image ``k`` draws its size and position from ``numpy.random.default_rng((SEED, k))``.
"""

import itertools
import random
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 64
SEED = 20240604

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 60, 190),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")

# Shapes span about half to two thirds of the image and sit near its centre.
MIN_SPAN, MAX_SPAN = 32, 43
MAX_OFFSET = 4
# Edges are drawn at 4x resolution and averaged down, so they are antialiased like photos.
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Triple:
    colour: str
    shape: str
    background: str

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"


ALL_TRIPLES = tuple(
    Triple(colour, shape, background)
    for colour, shape, background in itertools.product(COLOURS, SHAPES, COLOURS)
    if colour != background
)


def _choose_held_out(count: int, seed: int) -> tuple[Triple, ...]:
    """Pick held-out triples so that every pair inside one of them is still seen in training.

    No two held-out triples share a (colour, shape), (shape, background) or (colour,
    background) pair, so each held-out triple is a new combination of pairs the model has seen.
    """
    candidates = list(ALL_TRIPLES)
    random.Random(seed).shuffle(candidates)
    chosen: list[Triple] = []
    used: set[tuple[str, str, str]] = set()
    for triple in candidates:
        pairs = {
            ("cs", triple.colour, triple.shape),
            ("sb", triple.shape, triple.background),
            ("cb", triple.colour, triple.background),
        }
        if pairs & used:
            continue
        chosen.append(triple)
        used |= pairs
        if len(chosen) == count:
            break
    return tuple(sorted(chosen, key=ALL_TRIPLES.index))


# 10% of the 168 triples, rounded up; the list is printed in docs/demo_model.md.
HELD_OUT = _choose_held_out(count=17, seed=SEED)
TRAIN_TRIPLES = tuple(t for t in ALL_TRIPLES if t not in HELD_OUT)


def _shape_mask(shape: str, span: float, cx: float, cy: float) -> np.ndarray:
    """Coverage in [0, 1] of each pixel by the shape, from a supersampled hard mask."""
    n = IMAGE_SIZE * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / SUPERSAMPLE
    x, y = np.meshgrid(coords, coords)
    half = span / 2
    if shape == "circle":
        hard = (x - cx) ** 2 + (y - cy) ** 2 <= half**2
    elif shape == "square":
        hard = (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    elif shape == "triangle":
        # Upright isosceles triangle: apex at the top centre, base along the bottom edge.
        depth = (y - (cy - half)) / span
        hard = (depth >= 0) & (depth <= 1) & (np.abs(x - cx) <= depth * half)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return hard.reshape(IMAGE_SIZE, SUPERSAMPLE, IMAGE_SIZE, SUPERSAMPLE).mean(axis=(1, 3))


def render(triple: Triple, rng: np.random.Generator) -> np.ndarray:
    """A uint8 HxWx3 image of the triple, with size and position jitter drawn from ``rng``."""
    span = rng.uniform(MIN_SPAN, MAX_SPAN)
    cx, cy = IMAGE_SIZE / 2 + rng.uniform(-MAX_OFFSET, MAX_OFFSET, size=2)
    cover = _shape_mask(triple.shape, span, cx, cy)[..., None]
    fg = np.array(PALETTE[triple.colour], dtype=np.float64)
    bg = np.array(PALETTE[triple.background], dtype=np.float64)
    return np.rint(cover * fg + (1 - cover) * bg).astype(np.uint8)


def example(index: int, triples: tuple[Triple, ...] = TRAIN_TRIPLES) -> tuple[np.ndarray, Triple]:
    """Example ``index`` of the dataset over ``triples``: the image and its triple."""
    rng = np.random.default_rng((SEED, index))
    triple = triples[int(rng.integers(len(triples)))]
    return render(triple, rng), triple


def examples(
    count: int, triples: tuple[Triple, ...] = TRAIN_TRIPLES
) -> tuple[np.ndarray, list[Triple]]:
    """The first ``count`` examples stacked as a uint8 NxHxWx3 array, with their triples."""
    images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    chosen = []
    for index in range(count):
        images[index], triple = example(index, triples)
        chosen.append(triple)
    return images, chosen
